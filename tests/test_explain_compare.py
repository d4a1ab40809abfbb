"""Agreement between explanation methods (pure, on hand-made attributions) and faithfulness on a model whose
correct explanation is known (tests/support/trigger.py: "zebra" decides the class)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nbtune.explain.compare import agreement, compare, faithfulness, kendall_tau_b, spearman
from nbtune.explain.model import ExplainModel
from nbtune.explain.types import Attribution, ExplainError, Target, split_words
from tests.support.trigger import TRIGGER, load_trigger

TEXT = "the lamp zebra is on today"
ALARM = Target("classification", 0, "alarm")


def attr(method: str, scores, text: str = "a b c d e f", target: Target = ALARM) -> Attribution:
    return Attribution(method, split_words(text), np.asarray(scores, float), target, model_score=0.9)


def occlusion(em: ExplainModel, text: str, target=None) -> Attribution:
    """Leave-one-word-out: a word's score is how much the target's score falls when it alone is masked."""
    words = split_words(text)
    tgt = target if isinstance(target, Target) else em.target(text, target)
    texts = [text] + [words.join(np.arange(len(words)) != i, em.mask_word) for i in range(len(words))]
    s = em.score_texts(texts, tgt)  # (1 + W,)
    return Attribution("occlusion", words, s[0] - s[1:], tgt, float(s[0]), evaluations=len(texts))


# ---------------------------------------------------------------- agreement (pure)
def test_identical_rankings_agree_fully():
    info = agreement([attr("shap", [6, 5, 4, 3, 2, 1]), attr("lime", [60, 50, 40, 30, 20, 10])], k=3)
    p = info.pair("shap", "lime")
    assert p.spearman == pytest.approx(1.0) and p.kendall == pytest.approx(1.0)
    assert p.topk_overlap == 1.0 and p.top_word_agree and p.reason is None
    assert info.disagreements() == []
    np.testing.assert_allclose(info.matrix("spearman"), np.ones((2, 2)))


def test_reversed_ranking_and_exact_topk_overlap():
    a, rev, part = attr("a", [6, 5, 4, 3, 2, 1]), attr("rev", [1, 2, 3, 4, 5, 6]), attr("part", [6, 5, 1, 4, 2, 3])
    info = agreement([a, rev, part], k=3)
    assert info.pair("a", "rev").spearman == pytest.approx(-1.0)
    assert info.pair("a", "rev").kendall == pytest.approx(-1.0)
    assert info.pair("a", "rev").topk_overlap == 0.0 and not info.pair("a", "rev").top_word_agree
    assert info.pair("a", "part").topk_overlap == pytest.approx(2 / 3)      # {a,b,c} vs {a,b,d}
    assert info.pair("a", "part").top_word_agree
    assert info.pair("rev", "part").topk_overlap == pytest.approx(1 / 3)    # {f,e,d} vs {a,b,d}
    m = info.matrix("topk_overlap")
    assert m.shape == (3, 3) and m[0, 1] == m[1, 0] == 0.0 and m[0, 2] == pytest.approx(2 / 3)
    assert info.matrix("spearman")[0, 1] == pytest.approx(-1.0)


def test_disagreements_name_words_ranked_top_by_one_and_bottom_half_by_another():
    info = agreement([attr("a", [6, 5, 4, 3, 2, 1]), attr("rev", [1, 2, 3, 4, 5, 6])], k=2)
    found = {(d.method, d.word, d.rank, d.other_rank) for d in info.disagreements()}
    # a's top 2 (a, b) sit at rev's ranks 6 and 5 of 6; rev's top 2 (f, e) at a's ranks 6 and 5.
    assert found == {("a", "a", 1, 6), ("a", "b", 2, 5), ("rev", "f", 1, 6), ("rev", "e", 2, 5)}
    assert info.disagreements()[0].describe() == "'a' (word 0): a ranks it #1, rev #6 of 6"


def test_near_zero_scores_are_noise_not_disagreement():
    a, b = attr("a", [0.9, 0.002, 0.001, 0, 0, 0]), attr("b", [0.9, 0, 0, 0.003, 0.002, 0.001])
    info = agreement([a, b], k=3)
    assert info.disagreements() == []                            # under 5% of each method's largest score
    literal = {(d.method, d.word) for d in info.disagreements(min_share=0)}
    assert literal == {("a", "b"), ("a", "c"), ("b", "d"), ("b", "e")}      # top 3: a,b,c and a,d,e


def test_constant_vector_gives_nan_with_a_reason_not_a_crash():
    info = agreement([attr("shap", [3, 1, 2, 0, 0, 0]), attr("flat", [0.5] * 6)], k=3)
    p = info.pair("shap", "flat")
    assert math.isnan(p.spearman) and math.isnan(p.kendall)
    assert "flat gives every word the same score" in p.reason and "undefined" in p.reason
    m = info.matrix("spearman")
    assert m[0, 0] == 1.0 and math.isnan(m[1, 1]) and math.isnan(m[0, 1])
    assert info.disagreements() == []       # a flat method has no ranking to disagree with


def test_rank_statistics_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 3, 12).astype(float), rng.normal(size=12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y)[0])


def test_mismatched_text_or_target_is_refused_by_name():
    with pytest.raises(ExplainError, match=r"attribution 1 \(lime\) explains 'a b x d e f' but attribution 0 "
                                           r"\(shap\) explains 'a b c d e f'"):
        agreement([attr("shap", range(6)), attr("lime", range(6), text="a b x d e f")])
    calm = Target("classification", 1, "calm")
    with pytest.raises(ExplainError, match="explains target 'calm' but attribution 0 .* explains 'alarm'"):
        agreement([attr("shap", range(6)), attr("lime", range(6), target=calm)])
    with pytest.raises(ExplainError, match="at least two"):
        agreement([attr("shap", range(6))])


def test_repeated_methods_and_short_texts():
    info = agreement([attr("shap", [3, 2, 1], text="x y z"), attr("shap", [1, 2, 3], text="x y z")], k=5)
    assert info.methods == ["shap", "shap#2"] and info.k == 3
    assert "k=3" in info.notes[0]
    assert info.pair("shap", "shap#2").topk_overlap == 1.0      # all three words are everyone's top 3


# ---------------------------------------------------------------- faithfulness (trained trigger model)
@pytest.fixture(scope="module")
def em(trigger):
    model, tokenizer = load_trigger(trigger.model_dir)
    return ExplainModel(model, tokenizer, "classification")


@pytest.fixture(scope="module")
def right(em):
    a = occlusion(em, TEXT, "alarm")
    assert a.top(1)[0][0] == TRIGGER
    return a


def test_deleting_the_trigger_flips_the_prediction(em, right):
    f = faithfulness(em, right)
    assert f.counts == [0, 1, 2, 3, 4, 5, 6] and f.deletion.shape == (7,) and f.random_deletion.shape == (7,)
    assert f.full_score == pytest.approx(right.model_score, abs=1e-5) and f.full_score > 0.9
    assert f.prediction == "alarm" and f.prediction_after_top1_deleted == "calm"
    assert f.flipped_at == 1
    assert f.bin_counts == [1, 1, 1, 2, 3]                       # ceil(fraction * 6 words)
    assert f.comprehensiveness[0.01] == pytest.approx(f.drop_at(1)) and f.drop_at(1) > 0.5
    assert f.drop_at(1) > f.random_drop_at(1) + 0.2              # a method that beats random word orders
    assert f.aopc > f.random_aopc and f.beats_random
    assert f.sufficiency[0.01] < 0.2 and f.aopc_sufficiency < f.random_aopc_sufficiency
    assert f.deletion_auc < f.random_deletion_auc and f.insertion_auc > f.random_insertion_auc


def test_a_wrong_ranking_is_less_faithful(em, right):
    scores = right.scores.copy()
    scores[2] = scores.min() - 1.0                               # zebra ranked last
    wrong = Attribution("wrong", right.words, scores, right.target, right.model_score)
    good, bad = faithfulness(em, right), faithfulness(em, wrong)
    assert bad.aopc < good.aopc - 0.5
    assert bad.flipped_at == 6                                   # the prediction holds until zebra goes, last
    assert bad.prediction_after_top1_deleted == "alarm"


def test_one_batched_call_per_curve(em, right):
    calls = []

    class Counting(ExplainModel):
        def score_texts(self, texts, target):
            calls.append(("score", len(texts)))
            return super().score_texts(texts, target)

        def _probabilities(self, texts, word):
            calls.append(("probs", len(texts)))
            return super()._probabilities(texts, word)

    counting = Counting(em.model, em.tokenizer, "classification", batch_size=256)
    f = faithfulness(counting, right, random_seeds=4)
    # deletion (full distribution), insertion, random deletion (4 orders), random insertion (4 orders);
    # score_texts itself goes through _probabilities, so each curve is exactly one forward batch.
    assert [c for c in calls if c[0] == "score"] == [("score", 7), ("score", 28), ("score", 28)]
    assert len([c for c in calls if c[0] == "probs"]) == 4 and f.evaluations == 7 * 10


def test_omit_mode_and_coarse_steps(em, right):
    f = faithfulness(em, right, mode="omit", steps=2)
    assert f.mask == "" and f.counts == [0, 1, 2, 3, 6]          # 0, 3, 6 from steps=2, plus the bins' 1, 2, 3
    assert f.flipped_at == 1 and f.drop_at(1) > 0.5
    with pytest.raises(ExplainError, match="k=4 is not on the curve"):
        f.drop_at(4)
    with pytest.raises(ExplainError, match="mode='cut'"):
        faithfulness(em, right, mode="cut")
    tagged = Attribution("occlusion", right.words, right.scores, Target("token-classification", 0, "O", word=2), 0.5)
    with pytest.raises(ExplainError, match="token-classification needs mode='delete'"):
        faithfulness(em, tagged, mode="omit")


def test_compare_bundles_agreement_and_faithfulness(em, right):
    reversed_ = Attribution("reversed", right.words, -right.scores, right.target, right.model_score)
    info = compare(em, [right, reversed_], k=1)
    assert info.best() == "occlusion"
    assert info.agreement.pair("occlusion", "reversed").spearman == pytest.approx(-1.0)
    rows = {r["method"]: r for r in info.table()}
    assert rows["occlusion"]["flipped_at"] == 1 and rows["occlusion"]["beats_random"]
    assert not rows["reversed"]["beats_random"]
    other = occlusion(em, "the zebra reads a book", "alarm")
    with pytest.raises(ExplainError, match="compare one text at a time"):
        compare(em, [right, other])


def test_causal_lm_curves_on_tiny_llama():
    """causal-lm: scores are log-probabilities of the continuation; there is no class to flip."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbtune import assets
    torch.manual_seed(0)
    resolved = assets.resolve_model("tiny-llama")
    model = AutoModelForCausalLM.from_config(resolved.config).eval()
    lm = ExplainModel(model, AutoTokenizer.from_pretrained(resolved.tokenizer_path), "causal-lm")
    text = "the lamp is on in the kitchen"
    a = occlusion(lm, text, lm.target(text, continuation=" today"))
    f = faithfulness(lm, a, steps=3)
    assert f.counts == [0, 1, 2, 4, 5, 7] and f.target == "next: ' today'"     # 0, 2, 5, 7 plus bins 1, 2, 4
    assert f.full_score == pytest.approx(a.model_score, abs=1e-4) and f.full_score < 0
    assert f.prediction is None and f.flipped_at is None and f.prediction_after_top1_deleted is None
    assert f.comprehensiveness[0.5] == pytest.approx(f.full_score - f.deletion[3])   # ceil(0.5 * 7) = 4 words
    assert f.sufficiency[0.2] == pytest.approx(f.full_score - f.insertion[2])        # ceil(0.2 * 7) = 2 words
    assert f.empty_score == pytest.approx(float(f.insertion[0]))
