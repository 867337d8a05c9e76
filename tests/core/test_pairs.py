import pytest

from dfusion_core.errors import ConfigError
from dfusion_core.pairs import select_fusion_pairs, select_plain_pairs


def test_fusion_pairs_on_hand_made_scores():
    scores = [0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4]  # ranks: 1,4,6,2,7,3,5,0
    pairs = select_fusion_pairs(scores)
    assert [(p.reference, p.base) for p in pairs] == [(1, 7), (4, 3), (1, 5), (4, 0)]


def test_plain_pairs_best_vs_worst():
    scores = [0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4]
    assert [(p.reference, p.base) for p in select_plain_pairs(scores)] == [(1, 0), (4, 5), (6, 3), (2, 7)]


@pytest.mark.parametrize("n", [0, 3, 6, 10])
def test_samples_per_prompt_must_be_a_multiple_of_4(n):
    with pytest.raises(ConfigError, match="multiple of 4"):
        select_fusion_pairs([0.0] * n)


def test_pairs_carry_preference_only_when_the_winner_beats_the_loser():
    from dfusion_core.pairs import carries_preference, pairs_per_prompt

    assert carries_preference(0.8, 0.6, "winner_beats_loser")
    assert not carries_preference(0.6, 0.6, "winner_beats_loser")  # a tie teaches nothing
    assert not carries_preference(0.4, 0.6, "winner_beats_loser")  # a fusion that made it worse
    assert carries_preference(0.4, 0.6, "none")
    with pytest.raises(ConfigError, match="pair_filter"):
        carries_preference(1.0, 0.0, "best")
    assert pairs_per_prompt(8) == 4
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        pairs_per_prompt(6)
