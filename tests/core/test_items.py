import pytest

from dfusion_core.errors import ConfigError, ItemError
from dfusion_core.items import map_items


def test_multi_token_word_maps_to_all_its_tokens(tiny):
    # "a red and woolen dog" -> <bos> a red and woo len dog
    items = map_items(tiny.tokenizer, "a red and woolen dog", ["woolen", "dog"], [0.1, 0.2])
    assert items[0].positions == (4, 5)
    assert items[1].positions == (6,)
    ids = tiny.tokenizer("a red and woolen dog").input_ids
    assert tiny.tokenizer.convert_ids_to_tokens([ids[4], ids[5]]) == ["woo", "len</w>"]


def test_case_and_punctuation_do_not_matter(tiny):
    items = map_items(tiny.tokenizer, "The computer, below the Counter!", ["computer", "counter"], [0.1, 0.1])
    assert items[0].positions == (2, 3)  # compu, ter
    assert items[1].positions == (7,)


def test_item_missing_from_prompt(tiny):
    with pytest.raises(ItemError, match="'horse' is not a word"):
        map_items(tiny.tokenizer, "a cat eating a sandwich", ["horse"], [0.1])


def test_item_must_be_a_whole_word(tiny):
    with pytest.raises(ItemError, match="items"):
        map_items(tiny.tokenizer, "a woolen dog", ["wool"], [0.1])


def test_threshold_count_must_match(tiny):
    with pytest.raises(ConfigError, match="mask_thresholds"):
        map_items(tiny.tokenizer, "a cat eating a sandwich", ["cat", "sandwich"], [0.1])


def test_threshold_range(tiny):
    with pytest.raises(ConfigError, match="mask_thresholds"):
        map_items(tiny.tokenizer, "a cat", ["cat"], [1.5])


def test_token_beyond_context_window(tiny):
    text = " ".join(["big"] * 80) + " cat"
    with pytest.raises(ItemError, match="context window"):
        map_items(tiny.tokenizer, text, ["cat"], [0.1])


def test_empty_prompt(tiny):
    with pytest.raises(ConfigError, match="text"):
        map_items(tiny.tokenizer, "  ", ["cat"], [0.1])
