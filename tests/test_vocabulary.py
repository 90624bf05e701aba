from transformers import CLIPTokenizer

from imagic_lora.vocabulary import read_vocabulary, unknown_words, write_word_tokenizer

WORDS = ["a", "large", "red", "green", "circle", "square", "on", "white", "background", "gray", "greenish"]


def test_every_word_is_one_token_after_reload(tmp_path):
    write_word_tokenizer(tmp_path, WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("a large red circle on a white background").input_ids
    assert len(ids) == 8 + 2  # one token a word, plus start and end
    assert len(set(ids[1:-1])) == 7  # "a" twice
    for word in WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1


def test_unknown_words_are_named_in_order(tmp_path):
    write_word_tokenizer(tmp_path, WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    vocabulary = read_vocabulary(tmp_path)
    assert unknown_words(tokenizer, "a large red circle", vocabulary) == []
    assert unknown_words(tokenizer, "a Purple circle on a mauve background", vocabulary) == ["purple", "mauve"]
    # A prefix of a known word is not a known word.
    assert unknown_words(tokenizer, "a gre circle", vocabulary) == ["gre"]


def test_open_vocabulary_only_flags_unknown_tokens(tmp_path):
    write_word_tokenizer(tmp_path, WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    # Without a closed vocabulary (a real CLIP tokenizer), byte-level BPE knows every word.
    assert unknown_words(tokenizer, "a purple circle", None) == []
    assert read_vocabulary(tmp_path / "missing") is None
