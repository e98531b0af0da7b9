"""The quality bench's scoring: WER normalization and word edits, without whisper."""

from benchmarks.quality import _spoken_words, word_error_rate


def test_spoken_words_normalize_digits_and_goodbye():
    assert _spoken_words("6 plus 3 is 9.") == ["six", "plus", "three", "is", "nine"]
    assert _spoken_words("Goodbye, see you soon!") == ["good", "bye", "see", "you", "soon"]
    assert _spoken_words("▁it ▁is ▁blue") == ["it", "is", "blue"]  # text-stream pieces


def test_word_error_rate_sums_edits_over_shared_dialogues():
    refs = {0: ["six", "plus", "three", "is", "nine"], 1: ["it", "is", "blue"], 2: ["not", "transcribed"]}
    hyps = {0: ["six", "plus", "three", "is", "eleven"], 1: ["it", "blue", "now"]}
    # dialogue 0: one substitution; dialogue 1: one deletion + one insertion; dialogue 2 has no transcript
    assert word_error_rate(hyps, refs) == 3 / 8
    assert word_error_rate({}, refs) == 0.0
