"""nbtune.data.clean: exact outputs of each step, spec round trips, reports, idempotence, errors."""
import datasets
import pytest

from nbtune.data.clean import (CleanInputError, CleanSpecError, Dates, Deduplicate, Normalize, Numbers,
                               RemoveControlChars, StripHtml, Whitespace, apply_steps, clean, pipeline_from_spec,
                               zh_numeral_value)

LABELS = datasets.ClassLabel(names=["neg", "pos"])


def _dd(train, validation=None):
    feats = datasets.Features({"text": datasets.Value("string"), "label": LABELS})
    def part(rows):
        return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, features=feats)
    return datasets.DatasetDict({"train": part(train), "validation": part(validation or [("fine", 1)])})


# ---------------------------------------------------------------------------------------------- steps
@pytest.mark.parametrize("raw, expected", [
    ("<p>Hi&amp;<b>you</b></p><script>x</script>", "Hi& you"),
    ("un<i>believ</i>able H<sub>2</sub>O", "unbelievable H2O"),
    ("<div>one</div><div>two</div>", "one two"),
    ("a<br>b<br/>c", "a b c"),
    ("<!-- note -->text<style>p {color: red}</style>", "text"),
    ("&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;", "bold"),  # double-escaped markup is removed too
    ("paid <num> on <date>", "paid <num> on <date>"),  # placeholders from Numbers/Dates are text
    ("a < b and 1<2", "a < b and 1<2"),
    ("AT&T &copy 2024", "AT&T © 2024"),
])
def test_strip_html(raw, expected):
    assert StripHtml().apply(raw) == expected
    assert StripHtml().apply(expected) == expected


def test_normalize_and_its_form_check():
    assert Normalize().apply("ｆｕｌｌ　ｗｉｄｔｈ １２３ ﬁ") == "full width 123 fi"
    assert Normalize("NFC").apply("e\u0301") == "\u00e9"
    with pytest.raises(CleanSpecError, match=r"form must be one of nfc, nfd, nfkc, nfkd; found 'nfx'"):
        Normalize("nfx")


def test_remove_control_chars():
    text = "a\x00b\u200bc\td\ne\x1b\ue000\ufffd"
    assert RemoveControlChars().apply(text) == "abc\td\ne\ue000\ufffd"
    assert RemoveControlChars(private_use=True, replacement_char=True).apply(text) == "abc\td\ne"


@pytest.mark.parametrize("raw, placeholder, canonical", [
    ("Pay 1,234.5 now", "Pay <num> now", "Pay 1234.5 now"),
    ("up 50 % or 3 percent or 7%", "up <num>% or <num>% or <num>%", "up 50% or 3% or 7%"),
    ("1,000,000.50!", "<num>!", "1000000.50!"),
    ("mp3 5pm 2024-03-04 1,23", "mp3 5pm 2024-03-04 1,23", "mp3 5pm 2024-03-04 1,23"),
    ("他有三百二十元", "他有<num>元", "他有320元"),
    ("两千块钱", "<num>块钱", "2000块钱"),
    ("一万二千三百", "<num>", "12300"),
    ("百分之五十", "<num>%", "50%"),
    ("五点五", "<num>", "5.5"),
    ("二〇二四", "<num>", "2024"),
    ("三个人", "<num>个人", "3个人"),
    ("统一的 一些人 万一 七八个 十分好 三四百", "统一的 一些人 万一 七八个 十分好 三四百",
     "统一的 一些人 万一 七八个 十分好 三四百"),  # words, ranges and idioms stay
    ("20,30一个小时", "20,30<num>个小时", "20301个小时"),
])
def test_numbers(raw, placeholder, canonical):
    assert Numbers().apply(raw) == placeholder
    assert Numbers("canonical").apply(raw) == canonical
    assert Numbers("canonical").apply(canonical) == canonical


def test_zh_numeral_value_rules():
    assert [zh_numeral_value(r) for r in ("三百二十", "两千", "十一", "两百万")] == ["320", "2000", "11", "2000000"]
    assert zh_numeral_value("一", next_char="些") is None
    assert zh_numeral_value("一", next_char="个") == "1"
    assert zh_numeral_value("千万") is None


@pytest.mark.parametrize("raw, iso", [
    ("March 3, 2024", "2024-03-03"),
    ("Mar. 3rd 2024", "2024-03-03"),
    ("3rd of March, 2024", "2024-03-03"),
    ("3/4/2024", "2024-03-04"),
    ("2024-3-4 and 2024/03/04", "2024-03-04 and 2024-03-04"),
    ("2024年3月4日", "2024-03-04"),
    ("二〇二四年三月四日", "2024-03-04"),
    ("2024年十二月二十三号", "2024-12-23"),
    ("2/30/2024 and may 2024", "2/30/2024 and may 2024"),  # impossible date, no day: unchanged
])
def test_dates(raw, iso):
    assert Dates("iso").apply(raw) == iso
    assert Dates("iso").apply(iso) == iso
    assert Dates().apply("on March 3, 2024.") == "on <date>."


def test_dates_dayfirst():
    assert Dates("iso", dayfirst=True).apply("3/4/2024") == "2024-04-03"
    assert Dates("iso").apply("13/12/2024") == "13/12/2024"


def test_whitespace():
    assert Whitespace().apply("  a \t b\n\n c ") == "a b c"
    assert Whitespace(keep_newlines=True).apply(" a  b \n\n c ") == "a b\nc"


# ----------------------------------------------------------------------------------------------- specs
def test_spec_round_trip():
    spec = ["strip_html", {"normalize": "nfkc"}, {"numbers": "canonical"}, {"dates": {"mode": "iso", "dayfirst": True}},
            {"control": {"private_use": True}}, "whitespace", "dedupe"]
    steps = pipeline_from_spec(spec)
    assert [type(s) for s in steps] == [StripHtml, Normalize, Numbers, Dates, RemoveControlChars, Whitespace,
                                        Deduplicate]
    assert steps[3] == Dates("iso", dayfirst=True)
    assert [s.to_spec() for s in steps] == ["strip_html", "normalize", {"numbers": "canonical"},
                                            {"dates": {"mode": "iso", "dayfirst": True}},
                                            {"control": {"private_use": True}}, "whitespace", "dedupe"]
    assert pipeline_from_spec([s.to_spec() for s in steps]) == steps
    keep = StripHtml(keep=["<num>"])
    assert keep.to_spec() == {"strip_html": {"keep": ["<num>"]}}
    assert pipeline_from_spec([keep.to_spec()]) == [keep]


def test_spec_errors_name_the_problem():
    with pytest.raises(CleanSpecError, match=r"unknown cleaning step 'strip_htm'\. Did you mean 'strip_html'\? "
                                             r"Known steps: strip_html, normalize, control, dates, numbers"):
        pipeline_from_spec(["strip_htm"])
    with pytest.raises(CleanSpecError, match=r"step 'numbers' has no parameter 'digits'; it takes: mode, "
                                             r"placeholder, chinese"):
        pipeline_from_spec([{"numbers": {"digits": 2}}])
    with pytest.raises(CleanSpecError, match=r"step 'whitespace' takes no single value \(found 'x'\)"):
        pipeline_from_spec([{"whitespace": "x"}])
    with pytest.raises(CleanSpecError, match=r"one-key mapping"):
        pipeline_from_spec([{"numbers": True, "dates": True}])


# ----------------------------------------------------------------------------------------------- clean
def test_clean_reports_changes_previews_and_dedupe():
    ds = _dd([("<b>Hi</b>  there", 0), ("Hi there", 1), ("Call 1,000 now", 0), ("call 1,000 now", 0),
              ("same", 1), ("same", 1)], [("<i>x</i>", 0), ("x", 1)])
    r = clean(ds, strip_html=True, numbers=True, dedupe=True)
    assert r.steps == ["strip_html", "numbers", "whitespace", "dedupe"]
    by_name = {s.name: s for s in r.report}
    assert by_name["strip_html"].changed == {"train": 1, "validation": 1}
    assert by_name["numbers"].changed == {"train": 2, "validation": 0}
    assert by_name["whitespace"].changed == {"train": 1, "validation": 0}
    assert by_name["dedupe"].removed == {"train": 2, "validation": 1}
    assert by_name["strip_html"].previews[0] == ("train", 0, "<b>Hi</b>  there", "Hi  there")
    assert list(r.dataset["train"]["text"]) == ["Hi there", "Call <num> now", "call <num> now", "same"]
    assert list(r.dataset["train"]["label"]) == [0, 0, 0, 1]
    assert r.dataset["train"].features == ds["train"].features
    assert list(ds["train"]["text"])[0] == "<b>Hi</b>  there"  # the input is untouched


def test_clean_is_idempotent_on_fixtures():
    rows = [("<p>Paid&nbsp;1,234.5 on March 3, 2024</p>", 0), ("他有三百二十元，2024年3月4日", 1),
            ("ｆｕｌｌ１２３\x00 <num>", 0), ("&amp;lt;b&amp;gt;x", 1), ("20,30一个", 0)]
    for numbers, dates in (("canonical", "iso"), (True, True)):
        once = clean(_dd(rows), strip_html=True, normalize="nfkc", control=True, numbers=numbers, dates=dates,
                     dedupe=True)
        twice = clean(once.dataset, once.steps)
        assert [s.rows_changed + s.rows_removed for s in twice.report] == [0] * len(once.steps)
        assert list(twice.dataset["train"]["text"]) == list(once.dataset["train"]["text"])


@pytest.mark.parametrize("name, rows", [("sms-spam", None), ("zh-sentiment", 3000)])
def test_clean_is_idempotent_on_bundled_data(name, rows):
    from nbtune import assets

    ds = assets.load_dataset(name)
    if rows:
        ds = datasets.DatasetDict({k: v.select(range(min(rows, len(v)))) for k, v in ds.items()})
    once = clean(ds, strip_html=True, normalize="nfkc", control=True, numbers="canonical", dates="iso", dedupe=True)
    assert sum(s.rows_changed for s in once.report) > 100  # the steps did real work
    twice = clean(once.dataset, once.steps)
    assert [s.rows_changed + s.rows_removed for s in twice.report] == [0] * len(once.steps)


def test_apply_steps_matches_clean():
    ds = _dd([("<b>Paid</b> 1,234 on 3/4/2024", 0), ("  两千  块 ", 1)])
    r = clean(ds, strip_html=True, numbers="canonical", dates="iso")
    assert apply_steps(list(ds["train"]["text"]), r.steps) == list(r.dataset["train"]["text"])
    assert apply_steps(["  a  a "], ["whitespace", "dedupe"]) == ["a a"]  # dataset-level steps are skipped
    with pytest.raises(TypeError, match="wrap a single text"):
        apply_steps("text", ["whitespace"])


def test_clean_accepts_steps_or_a_spec_list_and_a_plain_dataset():
    ds = datasets.Dataset.from_dict({"text": ["<b>A</b>  1,000", "a 1000"]})
    r1 = clean(ds, StripHtml(), Numbers("canonical"), "whitespace")
    r2 = clean(ds, ["strip_html", {"numbers": "canonical"}, "whitespace"])
    assert isinstance(r1.dataset, datasets.Dataset)
    assert list(r1.dataset["text"]) == list(r2.dataset["text"]) == ["A 1000", "a 1000"]
    assert r1.steps == r2.steps == ["strip_html", {"numbers": "canonical"}, "whitespace"]
    with pytest.raises(CleanSpecError, match=r"either steps or keyword flags, not both \(got steps and \['dedupe'\]\)"):
        clean(ds, "whitespace", dedupe=True)


def test_bad_rows_are_named():
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["ok", None]}),
                               "test": datasets.Dataset.from_dict({"body": ["x"]})})
    with pytest.raises(CleanInputError,
                       match=r"split 'train', row 1, column 'text': expected a string, found NoneType"):
        clean(ds)
    with pytest.raises(CleanInputError, match=r"split 'test' has no column 'text'; its columns are \['body'\]"):
        clean(datasets.DatasetDict({"test": ds["test"]}))


def test_repr_html_escapes_user_text_and_marks_the_diff():
    ds = _dd([("<script>alert(1)</script>x &amp; y", 0)])
    page = clean(ds, strip_html=True)._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<del" in page and "strip_html" in page
