"""The T5 tokenizer as the papers use it (CoLA / GaLore: Hugging Face's `t5-base` on C4), offline.

A small SentencePiece unigram model is trained here with T5's layout (pad 0, eos 1, unk 2, no bos; 600 pieces) and
turned into a Hugging Face T5 tokenizer (+100 `<extra_id_*>` tokens at ids 600..699) whose `tokenizer.json` is
saved, as `save_pretrained` writes it for t5-base. On a few hundred Shakespeare paragraphs (short, empty, longer
than L, odd whitespace and characters, one holding the literal text '<extra_id_0>') the pipeline's 'cola' rows
(`document_window` of encode + EOS, padded with pad_id) must equal the authors' call
`tok(texts, max_length=L, truncation=True, padding="max_length")` exactly (integer ids, tolerance 0): input_ids
id for id, and the padded positions exactly where attention_mask is 0. Two intended exceptions, both on the
'<extra_id_0>' document: HFTokenizer maps that extra id (699 >= vocab_size 600) to unk (2) and counts it, and the
SentencePiece model (like T5's spiece.model) has no extra-id pieces, so it spells the text out.
"""

import hashlib
import os
import pickle

import numpy as np
import pytest
import tokenizers
import transformers

from lax_pretrain.data import shakespeare
from lax_pretrain.data.text import document_window
from lax_pretrain.data.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    train_t5_layout_sentencepiece,
)

L = 64
PIECES = 600
EXTRA = "<extra_id_0>"


def _works() -> dict[str, str]:
    return {name: f.read_text() for name, f in sorted(shakespeare.work_files().items())}


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """{'spiece': path of the SentencePiece model, 'hf_dir': save_pretrained dir, 'hf': the HF tokenizer, 'docs'}"""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("t5")
    works = _works()
    names = list(works)
    train_lines = [ln for n in names[:3] for ln in works[n].splitlines() if ln.strip()]
    spm_dir = root / "spm"
    spm_dir.mkdir()
    (spm_dir / "spiece.model").write_bytes(train_t5_layout_sentencepiece(train_lines, vocab_size=PIECES))
    # transformers 5: T5Tokenizer(vocab_file=...) ignores the file; from_pretrained converts the spiece.model.
    hf = transformers.T5Tokenizer.from_pretrained(str(spm_dir), model_max_length=L, extra_ids=100)
    hf_dir = root / "hf"
    hf.save_pretrained(str(hf_dir))

    paragraphs = [
        p.strip() for n in names[3:] for p in works[n].split("\n\n") if p.strip() and len(p.strip()) > 3
    ]
    docs = paragraphs[:: max(1, len(paragraphs) // 280)][:280]
    docs += ["\n\n".join(paragraphs[i : i + 6]) for i in range(0, 60, 6)]  # long: several paragraphs
    docs += [
        "",
        "   \n\t ",
        "O",
        "Thou  art\tmore   lovely, café naïve 日本 🙂",
        f"Hark, {EXTRA} the sentinel.",
    ]
    return {"spiece": str(spm_dir / "spiece.model"), "hf_dir": str(hf_dir), "hf": hf, "docs": docs}


def _cola_rows(tok, docs):
    """The pipeline's 'cola' rows: encode + EOS, truncated to L with EOS last, padded with pad_id; and the mask."""
    ids_NxL = np.full((len(docs), L), tok.pad_id, np.int64)
    mask_NxL = np.zeros((len(docs), L), np.int64)
    for i, text in enumerate(docs):
        ids = document_window(np.asarray(tok.encode(text) + [tok.eos_id]), L, "cola")
        ids_NxL[i, : len(ids)] = ids
        mask_NxL[i, : len(ids)] = 1
    return ids_NxL, mask_NxL


def _hf_rows(t5):
    out = t5["hf"](t5["docs"], max_length=L, truncation=True, padding="max_length")
    return np.asarray(out["input_ids"]), np.asarray(out["attention_mask"])


def test_documents_cover_short_long_and_the_extra_id(t5):
    lengths = [len(t5["hf"](d)["input_ids"]) for d in t5["docs"]]
    assert len(t5["docs"]) >= 250
    assert sum(n > L for n in lengths) >= 20 and sum(n < L // 2 for n in lengths) >= 20
    assert t5["hf"].convert_tokens_to_ids(EXTRA) == PIECES + 99 and len(t5["hf"]) == PIECES + 100


@pytest.mark.parametrize("form", ["dir", "file", "file_url"])
def test_hf_tokenizer_rows_equal_the_papers_hf_call(t5, form):
    spec = {
        "dir": t5["hf_dir"],
        "file": os.path.join(t5["hf_dir"], "tokenizer.json"),
        "file_url": "file://" + t5["hf_dir"],
    }[form]
    tok = load_tokenizer(spec)
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, -1, 2)
    hf_ids, hf_mask = _hf_rows(t5)
    ids, mask = _cola_rows(tok, t5["docs"])
    expected = np.where(hf_ids >= PIECES, tok.unk_id, hf_ids)  # the one intended difference: extra id -> unk
    assert (hf_ids >= PIECES).sum() == 1 and (hf_ids[-1] == PIECES + 99).any()
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(mask, hf_mask)
    np.testing.assert_array_equal(ids[mask == 0], tok.pad_id)
    assert (ids == tok.eos_id).sum() == len(t5["docs"])  # one EOS per row, none doubled


@pytest.mark.parametrize("form", ["path", "file_url"])
def test_sentencepiece_rows_equal_the_papers_hf_call(t5, form):
    tok = load_tokenizer(t5["spiece"] if form == "path" else "file://" + t5["spiece"])
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, -1, 2)
    hf_ids, hf_mask = _hf_rows(t5)
    ids, mask = _cola_rows(tok, t5["docs"])
    # All but the last document (the literal '<extra_id_0>', which the spiece model spells out) match exactly.
    np.testing.assert_array_equal(ids[:-1], hf_ids[:-1])
    np.testing.assert_array_equal(mask[:-1], hf_mask[:-1])
    assert (ids[-1] < PIECES).all()


def test_vocab_size_is_the_piece_count_and_extra_ids_map_to_unk(t5):
    hf_tok = HFTokenizer(t5["hf_dir"])
    sp_tok = SentencePieceTokenizer(t5["spiece"])
    assert hf_tok.vocab_size == sp_tok.vocab_size == PIECES  # not PIECES + 100: model.vocab_size=600 suffices
    for tok in (hf_tok, sp_tok):
        assert max(tok.pad_id, tok.eos_id, tok.unk_id) < tok.vocab_size
    assert hf_tok.unk_mapped == 0
    ids = hf_tok.encode(f"to be {EXTRA} or <extra_id_99> not")
    assert max(ids) < PIECES and ids.count(hf_tok.unk_id) >= 2
    assert hf_tok.unk_mapped == 2  # <extra_id_0> is 699, <extra_id_99> is 600: both counted
    assert hf_tok.encode("to be or not") == sp_tok.encode("to be or not")
    assert hf_tok.unk_mapped == 2
    assert hf_tok.decode(hf_tok.encode("to be or not") + [hf_tok.eos_id, 0, 0]) == "to be or not"
    assert sp_tok.decode(sp_tok.encode("to be or not")) == "to be or not"
    clone = pickle.loads(pickle.dumps(hf_tok))  # grain worker processes receive a copy
    assert clone.encode("to be or not") == hf_tok.encode("to be or not")


def test_tokenizer_json_without_extra_ids_or_t5_names():
    """A BERT-style tokenizer.json: EOS / BOS from its post-processor, every id counted, no '<pad>': pad 0."""
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "a": 3, "b": 4, "<extra_id_0>": 5}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tk.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tok = HFTokenizer("bert-like", data=tk.to_str().encode())
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 0, 6)  # not special: counted
    assert tok.encode("a b a") == [3, 4, 3] and tok.unk_mapped == 0

    tk.post_processor = None
    with pytest.raises(ValueError, match=r"^data\.tokenizer='no-eos' has no end-of-sequence token") as e:
        HFTokenizer("no-eos", data=tk.to_str().encode())
    assert "\n" not in str(e.value)


def test_bad_specs_are_one_error_naming_data_tokenizer(t5, tmp_path):
    (tmp_path / "garbage.model").write_bytes(b"\x00not a model")
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    (tmp_path / "empty_dir").mkdir()
    cases = [
        (str(tmp_path / "missing.model"), FileNotFoundError),
        (str(tmp_path / "missing_dir") + "/", FileNotFoundError),
        ("t5-base", FileNotFoundError),
        (str(tmp_path / "empty_dir"), FileNotFoundError),
        (os.path.dirname(t5["spiece"]), FileNotFoundError),  # holds spiece.model, no tokenizer.json
        (str(tmp_path / "garbage.model"), ValueError),
        (str(tmp_path / "bad.json"), ValueError),
        ("http://example.com/tokenizer.json", ValueError),
    ]
    for spec, error in cases:
        with pytest.raises(error) as e:
            load_tokenizer(spec)
        message = str(e.value)
        assert message.startswith(f"data.tokenizer={spec!r}") and "\n" not in message, message
    with pytest.raises(FileNotFoundError, match="Hub name is not downloaded"):
        load_tokenizer("t5-base")
    with pytest.raises(FileNotFoundError, match=r"pass '.*spiece\.model'"):
        load_tokenizer(os.path.dirname(t5["spiece"]))


def test_fingerprints_are_stable_and_tell_tokenizers_apart(t5, tmp_path):
    works = _works()
    other = tmp_path / "other.model"
    other.write_bytes(
        train_t5_layout_sentencepiece(next(iter(works.values())).splitlines()[:3000], vocab_size=400)
    )
    json_path = os.path.join(t5["hf_dir"], "tokenizer.json")
    with open(json_path, "rb") as f:
        json_sha = hashlib.sha256(f.read()).hexdigest()
    with open(t5["spiece"], "rb") as f:
        spm_sha = hashlib.sha256(f.read()).hexdigest()
    assert HFTokenizer(t5["hf_dir"]).fingerprint == HFTokenizer(json_path).fingerprint == json_sha
    assert load_tokenizer(t5["hf_dir"]).fingerprint == json_sha
    assert (
        SentencePieceTokenizer(t5["spiece"]).fingerprint
        == spm_sha
        == load_tokenizer(t5["spiece"]).fingerprint
    )
    assert load_tokenizer(str(other)).fingerprint not in (spm_sha, json_sha)
    assert ByteTokenizer().fingerprint == load_tokenizer("byte").fingerprint == "byte"
    assert len({json_sha, spm_sha, load_tokenizer(str(other)).fingerprint, "byte"}) == 4
