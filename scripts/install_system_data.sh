#!/usr/bin/env bash
# Installs the Debian package holding Fashion-MNIST (the embedded image dataset) when we are root and apt works.
# Without root or apt it says so and exits 0: text runs work anyway; image runs then need the files elsewhere.
set -u
FILES=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ -f "$FILES" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  if apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
     || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1); then
    echo "installed dataset-fashion-mnist (Debian) -> /usr/share/datasets/fashion-mnist"
    exit 0
  fi
fi
echo "note: could not install Debian's dataset-fashion-mnist (not root or no apt);" \
     "image runs will need --config.data.manual_dir pointing at the four *-ubyte.gz files." >&2
exit 0
