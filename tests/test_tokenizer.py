import pytest

from models.lm.tokenizer import TextTokenizer, TokenizerError

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(["what is two plus three", "the answer is five", "hello how are you",
                                 "i see a red circle", "spell the word cat", "c a t"] * 20))
    # Like kyutai's model, ids 0 and 3 are special (control) pieces.
    spm.SentencePieceTrainer.Train(input=str(corpus), model_prefix=str(d / "tiny"), vocab_size=30,
                                   hard_vocab_limit=False, model_type="unigram", character_coverage=1.0,
                                   bos_id=0, unk_id=1, eos_id=2, pad_id=3)
    return d / "tiny.model"


def test_roundtrip_and_stream_pieces(tiny_model):
    tok = TextTokenizer(tiny_model)
    ids = tok.encode("the answer is five")
    assert tok.decode(ids) == "the answer is five"
    assert "".join(tok.piece_text(i) for i in ids).strip() == "the answer is five"
    assert tok.piece_text(3) == "" and tok.piece_text(0) == ""


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        TextTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"nope")
    with pytest.raises(TokenizerError, match="not a SentencePiece"):
        TextTokenizer(bad)
