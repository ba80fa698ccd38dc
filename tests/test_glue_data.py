"""GLUE task registry and readers, user tables: real files and small synthetic ones per quirk."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from dynalora.data import (
    DATA_DIR_ENV,
    TASKS,
    DataError,
    DataWarning,
    Example,
    TaskSpec,
    get_task,
    load_split,
    load_table,
)
from dynalora.errors import MissingDependencyError

# (task, split, official row count, label counts by class index; None for STS-B)
OFFICIAL = [
    ("sst2", "train", 67349, {1: 37569, 0: 29780}),
    ("sst2", "dev", 872, {1: 444, 0: 428}),
    ("cola", "train", 8551, {1: 6023, 0: 2528}),
    ("cola", "dev", 1043, {1: 721, 0: 322}),
    ("mrpc", "train", 3668, {1: 2474, 0: 1194}),
    ("mrpc", "dev", 408, {1: 279, 0: 129}),
    ("rte", "train", 2490, {0: 1249, 1: 1241}),
    ("rte", "dev", 277, {0: 146, 1: 131}),
    ("stsb", "train", 5749, None),
    ("stsb", "dev", 1500, None),
]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture(autouse=True)
def no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # tests that rely on "no data_dir" must not pick up the developer's environment
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------- real GLUE files


@pytest.mark.filterwarnings("error::dynalora.data.DataWarning")  # the real files have no bad rows
@pytest.mark.parametrize(("task", "split", "rows", "counts"), OFFICIAL)
def test_real_files_match_official_counts(glue_dir, task, split, rows, counts):
    examples = load_split(task, split, glue_dir)
    assert len(examples) == rows
    spec = get_task(task)
    assert all(len(e.texts) == len(spec.text_fields) for e in examples)
    if counts is None:
        scores = [e.label for e in examples]
        assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
        assert len(set(scores)) > 50  # real-valued scores, not collapsed to classes
    else:
        assert dict(Counter(e.label for e in examples)) == counts


def test_real_mrpc_keeps_quotes_and_restored_row(glue_dir):
    examples = load_split("mrpc", "train", glue_dir)
    restored = examples[91]  # file line 93: header is line 1
    assert restored.texts[0].startswith('Officials at Brandeis said this was an " extremely heartrending "')
    assert restored.texts[1].startswith('" This is an extremely heartrending time')
    assert restored.label == 1


def test_real_cola_last_row_without_trailing_newline(glue_dir):
    assert not (glue_dir / "CoLA" / "dev.tsv").read_bytes().endswith(b"\n")
    last = load_split("cola", "dev", glue_dir)[-1]
    expected = (glue_dir / "CoLA" / "dev.tsv").read_text().split("\n")[-1].split("\t")[3]
    assert last.texts == (expected,)


def test_data_dir_may_be_root_parent_or_task_folder(glue_dir, monkeypatch):
    via_root = load_split("rte", "dev", glue_dir)
    assert load_split("rte", "dev", glue_dir.parent) == via_root
    assert load_split("rte", "dev", glue_dir / "RTE") == via_root
    monkeypatch.setenv(DATA_DIR_ENV, str(glue_dir))
    assert load_split("rte", "dev") == via_root


def test_pointing_at_another_tasks_folder_is_an_error(glue_dir):
    with pytest.raises(DataError, match=r"MRPC folder, but the task is rte"):
        load_split("rte", "dev", glue_dir / "MRPC")


def test_max_samples_is_a_seeded_random_subset(glue_dir):
    full = load_split("sst2", "dev", glue_dir)
    a = load_split("sst2", "dev", glue_dir, max_samples=50, seed=1)
    assert len(a) == 50
    assert a == load_split("sst2", "dev", glue_dir, max_samples=50, seed=1)
    assert a != load_split("sst2", "dev", glue_dir, max_samples=50, seed=2)
    assert a != full[:50]
    positions = [full.index(e) for e in a]
    assert positions == sorted(positions)  # kept in file order
    assert load_split("sst2", "dev", glue_dir, max_samples=10_000) == full
    with pytest.raises(DataError, match="max_samples"):
        load_split("sst2", "dev", glue_dir, max_samples=0)


# ---------------------------------------------------------------- registry


def test_registry_has_nine_tasks_with_glue_main_metrics():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    mains = {name: spec.main_metric for name, spec in TASKS.items()}
    assert mains == {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "pearson", "qqp": "f1",
                     "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].num_labels == 3 and not TASKS["mnli"].is_regression
    for spec in TASKS.values():
        assert spec.main_metric in spec.metrics


@pytest.mark.parametrize(("alias", "name"), [("SST-2", "sst2"), ("sst_2", "sst2"), ("STS-B", "stsb"),
                                             ("CoLA", "cola"), ("MNLI", "mnli"), ("sts", "stsb")])
def test_get_task_accepts_aliases(alias, name):
    assert get_task(alias) is TASKS[name]


def test_unknown_task_and_split_are_clear_errors():
    with pytest.raises(DataError, match=r"unknown GLUE task 'imdb'.*cola.*wnli"):
        get_task("imdb")
    with pytest.raises(DataError, match=r"no split 'test'.*train, dev"):
        load_split("rte", "test", "/nonexistent")


def test_custom_task_spec_gets_defaults_and_is_validated():
    spec = TaskSpec("reviews", ("text",), ("bad", "good"))
    assert (spec.main_metric, spec.dir_name, spec.file_text_columns) == ("accuracy", "reviews", ("text",))
    assert "roc_auc" in spec.metrics and spec.num_labels == 2
    assert TaskSpec("score", ("a", "b"), None).main_metric == "pearson"
    with pytest.raises(DataError, match="main_metric"):
        TaskSpec("x", ("text",), ("a", "b"), main_metric="pearson")
    with pytest.raises(DataError, match="one or two"):
        TaskSpec("x", ("a", "b", "c"), ("a", "b"))


# ---------------------------------------------------------------- layouts of absent tasks

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
                   "label4\tlabel5\tgold_label")


def mnli_row(i: int, premise: str, hypothesis: str, gold: str, annotators: int) -> str:
    return "\t".join([str(i), "31193", f"{i}n", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
                      premise, hypothesis, *[gold] * annotators, gold])


def test_mnli_standard_layout(tmp_path):
    root = tmp_path / "glue"
    write(root / "MNLI" / "train.tsv", "\n".join([
        MNLI_TRAIN_HEADER,
        mnli_row(0, "A man sleeps.", "Nobody sleeps.", "contradiction", 1),
        mnli_row(1, "A man sleeps.", "A person rests.", "entailment", 1),
        mnli_row(2, "A man sleeps.", "He is tired.", "neutral", 1),
    ]) + "\n")
    write(root / "MNLI" / "dev_matched.tsv", f"{MNLI_DEV_HEADER}\n{mnli_row(0, 'p', 'h', 'neutral', 5)}\n")
    write(root / "MNLI" / "dev_mismatched.tsv", f"{MNLI_DEV_HEADER}\n{mnli_row(0, 'p2', 'h2', 'entailment', 5)}\n")
    train = load_split("mnli", "train", root)
    assert [e.label for e in train] == [2, 0, 1]  # entailment, neutral, contradiction order
    assert train[1].texts == ("A man sleeps.", "A person rests.")
    assert load_split("mnli", "dev", root) == [Example(("p", "h"), 1)]
    assert load_split("mnli", "dev_matched", root) == [Example(("p", "h"), 1)]
    assert load_split("mnli", "dev_mismatched", root) == [Example(("p2", "h2"), 0)]


@pytest.mark.parametrize(("task", "header", "row", "expected"), [
    ("qnli", "index\tquestion\tsentence\tlabel", "0\tWho won?\tThe Broncos won.\tentailment",
     Example(("Who won?", "The Broncos won."), 0)),
    ("qqp", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "7\t15\t16\tHow do I x?\tHow to x?\t1",
     Example(("How do I x?", "How to x?"), 1)),
    ("wnli", "index\tsentence1\tsentence2\tlabel", "0\tI stuck a pin.\tThe pin was stuck.\t1",
     Example(("I stuck a pin.", "The pin was stuck."), 1)),
])
def test_absent_tasks_standard_layout(tmp_path, task, header, row, expected):
    spec = get_task(task)
    write(tmp_path / spec.dir_name / "dev.tsv", f"{header}\n{row}\n")
    assert load_split(task, "dev", tmp_path) == [expected]


# ---------------------------------------------------------------- quirks and errors


def test_bom_header_is_read(tmp_path):
    write(tmp_path / "MRPC" / "train.tsv",
          "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b .\tA c .\n0\t3\t4\tX .\tY .\n")
    assert [e.label for e in load_split("mrpc", "train", tmp_path)] == [1, 0]


def test_quotes_are_literal_and_never_merge_rows(tmp_path):
    # a CSV parser would open a quoted field at the first `"` and swallow the next line
    write(tmp_path / "SST-2" / "train.tsv",
          'sentence\tlabel\n" it opens a quote \t1\nand this "closes it\t0\n"quoted"\t1\n')
    examples = load_split("sst2", "train", tmp_path)
    assert [e.texts[0] for e in examples] == ['" it opens a quote ', 'and this "closes it', '"quoted"']
    assert [e.label for e in examples] == [1, 0, 1]


def test_headerless_cola_crlf_and_unicode_line_separator(tmp_path):
    write(tmp_path / "CoLA" / "dev.tsv",
          "gj04\t1\t\tFirst sentence\u2028still first.\r\nclc95\t0\t*\tSecond one.")
    examples = load_split("cola", "dev", tmp_path)
    assert examples == [Example(("First sentence\u2028still first.",), 1), Example(("Second one.",), 0)]


def test_malformed_rows_are_skipped_with_file_and_line(tmp_path):
    path = write(tmp_path / "RTE" / "train.tsv", "\n".join([
        "index\tsentence1\tsentence2\tlabel",
        "0\ta\tb\tentailment",
        "1\ta\tb",                    # line 3: a column missing
        "2\ta\tb\tcontradiction",     # line 4: not an RTE label
        "3\ta\tb\tnot_entailment",
        "4\ta\tb\tx\ty",              # line 6: one column too many
    ]) + "\n")
    with pytest.warns(DataWarning) as record:
        examples = load_split("rte", "train", tmp_path)
    assert [e.label for e in examples] == [0, 1]
    message = str(record[0].message)
    assert str(path) in message and "skipped 3 malformed row(s), kept 2" in message
    assert "line 3: expected 4" in message and "found 3" in message
    assert "line 4: unknown label 'contradiction'" in message
    assert "line 6: expected 4" in message


def test_many_problems_are_summarised_with_a_count(tmp_path):
    rows = [f"{i}\tbad\tbad\tmaybe" for i in range(12)]
    write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
          + "\n".join(rows) + "\n")
    with pytest.warns(DataWarning, match=r"skipped 12 .*line 3: .*and 7 more"):
        load_split("rte", "dev", tmp_path)


def test_non_numeric_score_is_skipped(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write(tmp_path / "STS-B" / "dev.tsv",
          f"{header}\n0\tg\tf\ty\t0\tn\tn\tA.\tB.\t3.800\n1\tg\tf\ty\t1\tn\tn\tC.\tD.\tfive\n"
          f"2\tg\tf\ty\t2\tn\tn\tE.\tF.\tnan\n")
    with pytest.warns(DataWarning, match=r"line 3: score 'five' is not a finite number.*line 4"):
        examples = load_split("stsb", "dev", tmp_path)
    assert examples == [Example(("A.", "B."), 3.8)]


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("sentence\tlabel\n", "no valid rows.*no data rows"),
    ("sentence\tlabel\nfine\tpositive\n", "no valid rows.*line 2: unknown label 'positive'"),
    ("text\ttarget\nfine\t1\n", r"no column 'sentence'.*\['text', 'target'\]"),
])
def test_unusable_files_are_errors(tmp_path, content, message):
    write(tmp_path / "SST-2" / "train.tsv", content)
    with pytest.raises(DataError, match=message):
        load_split("sst2", "train", tmp_path)


def test_missing_file_and_folder_name_the_expected_path(tmp_path):
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(DataError, match=rf"not found: {tmp_path / 'SST-2' / 'dev.tsv'}"):
        load_split("sst2", "dev", tmp_path)
    with pytest.raises(DataError, match=r"no RTE folder found.*<data-dir>/RTE/train.tsv"):
        load_split("rte", "train", tmp_path)
    with pytest.raises(DataError, match="data directory not found"):
        load_split("rte", "train", tmp_path / "nope")
    with pytest.raises(DataError, match="is a file; pass the folder"):
        load_split("sst2", "dev", write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\na\t1\n"))


def test_non_utf8_file_is_an_error(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ncaf\xe9\t1\n", encoding="latin-1")
    with pytest.raises(DataError, match="not UTF-8"):
        load_split("sst2", "dev", tmp_path)


# ---------------------------------------------------------------- the Hub fallback


class FailingHub:
    def __call__(self, *args, **kwargs):
        raise ConnectionError("offline\nsecond line of detail")


def test_hub_failure_gives_one_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", FailingHub())
    with pytest.raises(DataError) as info:
        load_split("mrpc", "dev")
    message = str(info.value)
    assert "--data-dir" in message and DATA_DIR_ENV in message and "<data-dir>/MRPC/dev.tsv" in message
    assert "ConnectionError: offline" in message and "second line" not in message


def test_hub_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"needs the `datasets` package.*--data-dir.*<data-dir>/SST-2/train.tsv"):
        load_split("sst2", "train")


def test_hub_rows_are_mapped_and_unlabelled_rows_dropped(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(path, name, split):
        calls.append((path, name, split))
        return [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0},
                {"premise": "q", "hypothesis": "i", "label": -1, "idx": 1}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_split("mnli", "dev_mismatched") == [Example(("p", "h"), 2)]
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]


# ---------------------------------------------------------------- user tables


def test_csv_with_standard_quoting(tmp_path):
    path = write(tmp_path / "t.csv", 'id,text,label\n1,"Hello, world",pos\n2,"two\nlines",neg\n3,plain,pos\n')
    examples, labels = load_table(path, ["text"], "label")
    assert labels == ("neg", "pos")
    assert examples == [Example(("Hello, world",), 1), Example(("two\nlines",), 0), Example(("plain",), 1)]


def test_tsv_and_numeric_label_discovery(tmp_path):
    path = write(tmp_path / "t.tsv", "a\tb\ty\nx1\tx2\t10\nx3\tx4\t2\nx5\tx6\t9\n")
    examples, labels = load_table(path, ["a", "b"], "y")
    assert labels == ("2", "9", "10")  # numeric order, not "10" < "2"
    assert [e.label for e in examples] == [2, 0, 1]
    assert examples[0].texts == ("x1", "x2")


def test_jsonl_bad_lines_are_reported_with_line_numbers(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "good", "label": 1}\n{"text": "broken"\n\n'
                 '{"text": "no label"}\n{"text": "fine", "label": 0}\n[1, 2]\n')
    with pytest.warns(DataWarning) as record:
        examples, labels = load_table(path, ["text"], "label", labels=["0", "1"])
    assert labels == ("0", "1")
    assert examples == [Example(("good",), 1), Example(("fine",), 0)]
    message = str(record[0].message)
    assert "line 2: invalid JSON" in message
    assert "line 4: missing field(s) ['label']" in message
    assert "line 6: expected a JSON object" in message


def test_json_list_regression(tmp_path):
    path = write(tmp_path / "t.json", json.dumps([{"s1": "a", "s2": "b", "score": 4},
                                                  {"s1": "c", "s2": "d", "score": "2.5"}]))
    examples, labels = load_table(path, ["s1", "s2"], "score", regression=True)
    assert labels is None
    assert examples == [Example(("a", "b"), 4.0), Example(("c", "d"), 2.5)]
    assert all(isinstance(e.label, float) for e in examples)


def test_given_labels_skip_other_values(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\na,pos\nb,meh\nc,neg\n")
    with pytest.warns(DataWarning, match=r"line 3: unknown label 'meh' \(expected one of neg, pos\)"):
        examples, _ = load_table(path, ["text"], "label", labels=["neg", "pos"])
    assert [e.label for e in examples] == [1, 0]


@pytest.mark.parametrize(("name", "content", "kwargs", "message"), [
    ("t.xlsx", "x", {}, "unsupported file type '.xlsx'"),
    ("t.csv", "text,label\na,1\n", {"text_columns": ["body"]}, r"no column 'body'.*\['text', 'label'\]"),
    ("t.csv", "text,label\na,1\nb,1\n", {}, "found 1 distinct label value"),
    ("t.csv", "text,label\na,1\n", {"labels": ["0", "1"], "regression": True}, "one or the other"),
    ("t.json", '{"text": "a"}', {}, "expected a JSON list of records"),
    ("t.json", "[{]", {}, "line 1: invalid JSON"),
    ("t.csv", "", {}, "is empty"),
])
def test_user_table_errors(tmp_path, name, content, kwargs, message):
    path = write(tmp_path / name, content)
    args = {"text_columns": ["text"], "label_column": "label", **kwargs}
    with pytest.raises(DataError, match=message):
        load_table(path, **args)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("a.csv", "text,label\nhi,1\n", ["text"]),
    ("b.tsv", "idx\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n", ["sentence1", "sentence2"]),
    ("c.jsonl", '{"id": 1, "review": "fine", "label": "pos"}\n', ["review"]),
    ("d.csv", "premise,hypothesis,genre,label\na,b,c,1\n", ["premise", "hypothesis"]),
])
def test_text_columns_nobody_named_are_found_as_run_glue_finds_them(tmp_path, name, content, expected):
    from dynalora.training import TrainConfig

    path = tmp_path / name
    path.write_text(content)
    config = TrainConfig(train_file=str(path), dev_file=str(path), output=str(tmp_path / "run"))
    assert config.text_columns == expected


def test_ambiguous_text_columns_ask_to_be_named(tmp_path):
    from dynalora.data.tables import guess_text_columns

    path = tmp_path / "t.csv"
    path.write_text("title,body,author,label\na,b,c,1\n")
    with pytest.raises(DataError, match=r"t.csv: which column\(s\) hold the text\? .*\['title', 'body', 'author'\]"):
        guess_text_columns(path, "label")
