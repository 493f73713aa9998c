from ml_backend.label_config import parse_label_config
from ml_backend.llm.base import ContinuationTrie
from ml_backend.llm.prompts import ChatFormat, Demonstration, build_scoring_prompt
from tests.conftest import LABELING_CONFIGS, QWEN_LIKE_TEMPLATE

TOPIC = parse_label_config((LABELING_CONFIGS / "topic_en.xml").read_text()).targets[0]


def test_chat_prompt_is_cut_around_the_task_text():
    prompt = build_scoring_prompt(
        ChatFormat(QWEN_LIKE_TEMPLATE), TOPIC, demonstrations=[Demonstration("Stocks fell.", ("Business",))]
    )
    assert prompt.prefix.startswith("<|im_start|>system\n")
    assert "- Sci/Tech: Science" in prompt.prefix
    assert prompt.prefix.endswith("<|im_start|>assistant\nBusiness<|im_end|>\n<|im_start|>user\n")
    assert prompt.answer_lead == "<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.answer_end.startswith("<|im_end|>")


def test_instruction_replaces_the_default_one():
    prompt = build_scoring_prompt(ChatFormat(QWEN_LIKE_TEMPLATE), TOPIC, instruction="Label news by section.")
    assert "Label news by section." in prompt.prefix
    assert "Classify the text" not in prompt.prefix


def test_plain_format_for_base_models():
    prompt = build_scoring_prompt(ChatFormat(None), TOPIC)
    assert prompt.prefix.endswith("Text: ")
    assert prompt.answer_lead == "\nLabel: "


def test_trie_shares_leading_tokens():
    trie = ContinuationTrie.build([[1, 2, 3], [1, 2, 4], [1, 5]])
    assert len(trie.nodes) == 5  # 1, 2, 3, 4, 5
    assert [trie.nodes[n][0] for n in trie.path(trie.leaf_of[1])] == [1, 2, 4]
    assert sorted(trie.members[0]) == [0, 1, 2]
    assert trie.has_children[0] and not trie.has_children[trie.leaf_of[2]]


def _single_choice(values: list[str]):
    choices = "".join(f'<Choice value="{v}"/>' for v in values)
    return parse_label_config(
        f'<View><Text name="t" value="$t"/><Choices name="c" toName="t">{choices}</Choices></View>'
    ).targets[0]


def test_end_of_answer_is_scored_only_where_a_label_starts_another(keyword_runtime):
    from ml_backend.predictor import LabelScorer, PredictionOptions

    scorer = LabelScorer(keyword_runtime, PredictionOptions(bias_calibration="none"))
    end = keyword_runtime.tokenize("<|im_end|>", special=True)[:1]

    distinct = _single_choice(["World", "Sports"])
    lead_and_labels = scorer.label_continuations(distinct, scorer.prompt(distinct))
    assert all(c.end == "" for c in lead_and_labels)
    assert lead_and_labels[1].text.endswith("Sports")
    as_tokens = scorer.continuations(distinct, scorer.prompt(distinct))  # the runtime's view
    assert all(tokens[-1] != end[0] for tokens in as_tokens)
    assert "".join(map(chr, as_tokens[1])).endswith("Sports")

    nested = _single_choice(["Sci", "Sci/Tech"])
    with_end = scorer.label_continuations(nested, scorer.prompt(nested))
    assert all(c.end.startswith("<|im_end|>") for c in with_end)
    assert all(tokens[-1] == end[0] for tokens in scorer.continuations(nested, scorer.prompt(nested)))
