import pytest

from ml_backend.errors import UnsupportedConfig
from ml_backend.label_config import parse_label_config
from tests.conftest import LABELING_CONFIGS

ALL_CONFIGS = sorted(LABELING_CONFIGS.glob("*.xml"))


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses_to_at_least_one_target(path):
    spec = parse_label_config(path.read_text(encoding="utf-8"))
    assert spec.targets
    for target in spec.targets:
        assert target.data_key == "text"
        assert len(target.options) >= 2


def test_chinese_labels_with_alias_and_hint():
    spec = parse_label_config((LABELING_CONFIGS / "sentiment_zh.xml").read_text(encoding="utf-8"))
    (target,) = spec.classification_targets
    assert [o.result_value for o in target.options] == ["positive", "negative"]  # alias is what LS stores
    assert [o.prompt_name for o in target.options] == ["正面", "负面"]  # value is what the LLM reads
    assert target.options[0].hint.startswith("好评")


def test_several_choices_blocks_single_and_multiple():
    config = """<View>
      <Text name="review" value="$review"/>
      <Choices name="sentiment" toName="review"><Choice value="Good"/><Choice value="Bad"/></Choices>
      <Choices name="topics" toName="review" choice="multiple">
        <Choice value="price"/><Choice value="service"/><Choice value="food"/>
      </Choices>
    </View>"""
    spec = parse_label_config(config)
    by_name = {t.from_name: t for t in spec.targets}
    assert set(by_name) == {"sentiment", "topics"}
    assert not by_name["sentiment"].multiple
    assert by_name["topics"].multiple
    assert by_name["topics"].data_key == "review"
    assert by_name["topics"].result_values == ["price", "service", "food"]


def test_hypertext_object_is_supported():
    config = '<View><HyperText name="page" value="$html"/><Choices name="c" toName="page"><Choice value="A"/><Choice value="B"/></Choices></View>'
    (target,) = parse_label_config(config).targets
    assert target.object_tag == "HyperText"
    assert target.data_key == "html"


def test_labels_on_text_become_span_targets():
    config = '<View><Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels><Text name="text" value="$text"/></View>'
    spec = parse_label_config(config)
    assert [t.kind for t in spec.targets] == ["labels"]
    assert spec.classification_targets == ()


@pytest.mark.parametrize(
    "config",
    [
        '<View><Image name="img" value="$image"/><Choices name="c" toName="img"><Choice value="A"/></Choices></View>',
        '<View><Text name="text" value="$text"/><TextArea name="answer" toName="text"/></View>',
        "<View><Text name=",
        "",
    ],
    ids=["image-only", "no-choices", "broken-xml", "empty"],
)
def test_configs_we_cannot_serve_raise_a_clear_error(config):
    with pytest.raises(UnsupportedConfig) as info:
        parse_label_config(config)
    assert info.value.message
    assert info.value.status_code == 422


def test_config_hash_ignores_whitespace_but_not_hints():
    a = parse_label_config('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="A"/><Choice value="B"/></Choices></View>')
    b = parse_label_config('<View>\n  <Text name="t" value="$t"/>\n  <Choices name="c" toName="t"><Choice value="A"/><Choice value="B"/></Choices>\n</View>')
    c = parse_label_config('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="A" hint="x"/><Choice value="B"/></Choices></View>')
    assert a.config_hash == b.config_hash
    assert a.config_hash != c.config_hash
