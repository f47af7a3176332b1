"""Rows from a math data source: a local JSON Lines file (our own strict reader), a parquet / csv /
arrow file or folder and an HF dataset or `save_to_disk` folder (through `datasets`, imported lazily),
and the named sources (benchmarks, GSM8K, OPSD's training set) with their hub ids and file names.

Yields numbered raw rows (JSON Lines as bytes, others as dicts) and names them for errors; turning a
row into a Problem is atesd.tasks.rows'. Knows nothing of fields, bands or tokenizers.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from atesd.hub import cache_only_hint

if TYPE_CHECKING:
    from atesd.tasks.math import MathDataConfig

logger = logging.getLogger(__name__)


class DataSource(NamedTuple):
    """A named data set: its HF dataset id and split, and its file name in a local data folder."""

    hf_id: str
    split: str
    file: str


BENCHMARKS: dict[str, DataSource] = {
    "aime24": DataSource("HuggingFaceH4/aime_2024", "train", "aime24.jsonl"),
    "aime25": DataSource("yentinglin/aime_2025", "train", "aime25.jsonl"),
    "hmmt25": DataSource("MathArena/hmmt_feb_2025", "train", "hmmt25.jsonl"),
}
DATASETS: dict[str, DataSource] = {
    **BENCHMARKS,
    "gsm8k": DataSource("openai/gsm8k", "train", "gsm8k_train.jsonl"),
    "gsm8k_test": DataSource("openai/gsm8k", "test", "gsm8k_test.jsonl"),
    "opsd": DataSource("siyanzhao/Openthoughts_math_30k_opsd", "train", "openthoughts_math_30k_opsd.jsonl"),
}
_HF_CONFIG_NAMES = {"openai/gsm8k": "main"}  # datasets that need a config name to load
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow")  # a source named so is a path
_TABLES = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}  # read through datasets
_LOCAL_DATA = (
    "give a local data file (real.data.source=PATH), or for a named source the folder holding its file "
    "(real.data.data_dir, eval.py --data-dir)"
)
_ONLY_JSONL = "only JSON Lines (one JSON object a line) is read from a .json or .jsonl file: convert it"
_SAVED = ("state.json", "dataset_dict.json")  # a folder holding one was written by save_to_disk
_WHOLE_JSON_BYTES = 50 << 20  # a file under this whose first line opens an object is parsed whole


def local_file(source: str, known: DataSource, split: str | None) -> str:
    """The file in a data folder that holds `split` of a named source: its own, or the file of the
    named source with the same HF id and that split (gsm8k with split 'test': gsm8k_test.jsonl)."""
    if split is None or split == known.split:
        return known.file
    for other in DATASETS.values():
        if other.hf_id == known.hf_id and other.split == split:
            return other.file
    splits = sorted({d.split for d in DATASETS.values() if d.hf_id == known.hf_id})
    raise ValueError(
        f"{source}: split {split!r} is in no data_dir file (they hold split {', '.join(splits)}); leave "
        f"data_dir unset to read it from the Hugging Face hub, {known.hf_id}"
    )


def resolve_source(cfg: MathDataConfig) -> Path | tuple[str, str | None, str]:
    """A local file or folder, or (HF id, HF config name, split): a named source's file of cfg.split
    in data_dir (which must hold it when given: a mistyped folder never turns into a download), else
    the named source's HF id, else an existing file or folder, else a path (a name ending in a data
    file's extension is always one), else the given HF id. A name in DATASETS is always the named
    source, even beside a file or folder of that name here (`./gsm8k` reads that): the recipes record
    it as a name, so a resume from another directory reads the same data. A setting that would be
    ignored (data_dir beside another source, split or hf_name beside a local file) is refused."""
    known = DATASETS.get(cfg.source)
    if known and cfg.data_dir:
        if cfg.hf_name is not None:  # the file of data_dir is read whatever the hub config's name
            raise ValueError(
                f"real.data.hf_name={cfg.hf_name!r} names a configuration on the hub, but {cfg.source} is "
                f"read from data_dir {cfg.data_dir}: leave one of them unset"
            )
        file = local_file(cfg.source, known, cfg.split)
        local = Path(cfg.data_dir).expanduser() / file
        if not local.is_file():
            raise FileNotFoundError(
                f"{cfg.source}: no {file} in data_dir {cfg.data_dir} (leave data_dir unset to read "
                f"it from the Hugging Face hub, {known.hf_id})"
            )
        return local
    if known:
        if Path(cfg.source).exists():
            logger.warning(
                "real.data.source=%s is the named source (%s), not the %s of that name here: write "
                "./%s to read that",
                cfg.source,
                known.hf_id,
                "folder" if Path(cfg.source).is_dir() else "file",
                cfg.source,
            )
        return known.hf_id, cfg.hf_name or _HF_CONFIG_NAMES.get(known.hf_id), cfg.split or known.split
    if cfg.data_dir:
        raise ValueError(
            f"real.data.data_dir={cfg.data_dir!r} applies to the named sources "
            f"({', '.join(sorted(DATASETS))}), not to {cfg.source!r}: leave it unset (a path in "
            "real.data.source is read as it is)"
        )
    path = Path(cfg.source).expanduser()
    if path.is_file() or path.is_dir():
        saved = path.is_dir() and any((path / name).is_file() for name in _SAVED)
        ignored = {"split": path.is_file(), "hf_name": path.is_file() or saved}
        for key, refused in ignored.items():
            if refused and getattr(cfg, key) is not None:
                what = "save_to_disk folder" if path.is_dir() else "local file"
                raise ValueError(
                    f"real.data.{key}={getattr(cfg, key)!r} applies to HF datasets and named sources, not "
                    f"to the {what} {path}: leave it unset"
                )
        return path
    if path.suffix.lower() in DATA_SUFFIXES:
        raise FileNotFoundError(f"no such data file: {path}")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", cfg.source):
        return cfg.source, cfg.hf_name or _HF_CONFIG_NAMES.get(cfg.source), cfg.split or "train"
    raise ValueError(
        f"unknown data source {cfg.source!r}: give a data file or folder, an HF dataset id (owner/name) "
        f"or one of {sorted(DATASETS)}"
    )


def _datasets(what: str, instead: str = "give a local .jsonl path") -> Any:
    """The `datasets` module, imported only when a source needs it."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the `datasets` package: pip install -e '.[eval]' (or {instead})"
        ) from exc
    return datasets


def hf_rows(hf_id: str, name: str | None, split: str) -> Iterator[tuple[int, Any]]:
    datasets = _datasets(f"loading the HF dataset {hf_id!r}")
    with cache_only_hint(hf_id, "dataset", _LOCAL_DATA):
        return enumerate(datasets.load_dataset(hf_id, name, split=split), start=1)


def table_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """A parquet, csv / tsv or arrow file's rows (dicts) through `datasets`."""
    kind = _TABLES[path.suffix.lower()]
    datasets = _datasets(f"reading the {kind} file {path}", "convert it to JSON Lines, .jsonl")
    options = _csv_options(datasets, [path], path) if kind == "csv" else {}
    table = _read_table(datasets, kind, [path], f"{path}: not readable as a {kind} file", options)
    return enumerate(table, start=1)


def _csv_options(datasets: Any, files: list[Path], where: Path) -> dict[str, Any]:
    """load_dataset's options that read every column of csv / tsv `files` as text, as written (type
    guessing made '007' the number 7 and the answer 'None' a null): the columns of the first file's
    header, which the others must share."""
    delimiters = {"\t" if file.suffix.lower() == ".tsv" else "," for file in files}
    if len(delimiters) > 1:
        raise ValueError(f"{where}: holds both .csv and .tsv files: keep one kind in a folder")
    (delimiter,) = delimiters
    header: list[str] = []
    for file in files:
        with file.open(newline="", encoding="utf-8-sig") as f:
            columns = next(csv.reader(f, delimiter=delimiter), None)
        if not columns:
            raise ValueError(f"{file}: no header line (the column names)")
        if header and columns != header:
            raise ValueError(
                f"{file}: its columns ({', '.join(columns)}) are not those of {files[0].name} "
                f"({', '.join(header)}): give a folder's files one header"
            )
        header = header or columns
    string = datasets.Value("string")
    return {"delimiter": delimiter, "keep_default_na": False,
            "features": datasets.Features(dict.fromkeys(header, string))}  # fmt: skip


def _read_table(datasets: Any, kind: str, files: list[Path], unreadable: str, options: dict) -> Any:
    """`files` as one table; a damaged or mislabelled file is a one-line ValueError, `unreadable`: why."""
    DatasetGenerationError = datasets.exceptions.DatasetGenerationError  # noqa: N806 (the class)
    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", **options)
    except (ValueError, DatasetGenerationError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        # a ragged csv: pandas' ParserError, which datasets wraps in a DatasetGenerationError
        cause = exc.__cause__ if isinstance(exc, DatasetGenerationError) and exc.__cause__ else exc
        why = str(cause).partition("\n")[0]
        raise ValueError(f"{unreadable}: {why}") from exc


def folder_rows(path: Path, cfg: MathDataConfig) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(how errors name it, its rows): a save_to_disk folder through `datasets.load_from_disk` (of a
    DatasetDict, the split cfg.split or 'train'), a folder of csv / tsv files read as text like one
    such file (_csv_options), any other folder (of data files, or a dataset script's) through
    `datasets.load_dataset`."""
    datasets = _datasets(f"reading the folder {path}")
    split = cfg.split or "train"
    if not any((path / name).is_file() for name in _SAVED):
        where = f"{path}[{split}]"
        files = _csv_files(datasets, path, cfg.hf_name, split)
        if files:
            options = _csv_options(datasets, files, path)
            return where, enumerate(_read_table(datasets, "csv", files, f"{where}: not readable", options), 1)
        try:
            rows = datasets.load_dataset(str(path), cfg.hf_name, split=split)
        except datasets.exceptions.DatasetGenerationError as exc:  # files of other columns: a traceback
            cause = exc.__cause__ or exc
            why = f"{type(cause).__name__}: {str(cause).partition(chr(10))[0]}"
            raise ValueError(f"{where}: its files do not read as one table ({why})") from exc
        return where, enumerate(rows, 1)
    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise ValueError(
                f"{path}: no split {split!r} in this saved DatasetDict (it holds {', '.join(saved)}): set "
                "real.data.split to one of them"
            )
        return f"{path}[{split}]", enumerate(saved[split], 1)
    if cfg.split is not None and cfg.split != str(saved.split):
        own = "" if saved.split is None else f" (split {saved.split})"
        raise ValueError(
            f"real.data.split={cfg.split!r}: {path} holds one saved Dataset{own}, not a DatasetDict of "
            "splits: leave it unset"
        )
    return str(path), enumerate(saved, 1)


def _csv_files(datasets: Any, path: Path, name: str | None, split: str) -> list[Path]:
    """The data files of `split` in a folder, as `datasets` picks them (by their names: train.csv,
    test.csv, data/train-*.csv ..), where they are all csv / tsv; else [] (read through datasets)."""
    data_files = datasets.load_dataset_builder(str(path), name).config.data_files or {}
    files = [Path(f) for f in data_files.get(split, [])]
    return files if files and all(f.suffix.lower() in (".csv", ".tsv") for f in files) else []


def file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Non-blank lines as bytes: each is decoded (UTF-8) with its JSON, so an undecodable line is a bad
    row named by its line number, like any other. A file that is not JSON Lines (a JSON array, a
    pretty-printed JSON object) is refused in one line."""
    with path.open("rb") as f:
        if f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            raise ValueError(f"{path}: a JSON array; {_ONLY_JSONL}")
        f.seek(0)
        first = next((line for line in f if line.strip()), b"")
    if _opens_an_object(first) and _one_json_value(path, first):
        raise ValueError(f"{path}: its first line opens a JSON object that it does not close; {_ONLY_JSONL}")
    return _lines(path)


def _opens_an_object(line: bytes) -> bool:
    """Whether `line` starts a JSON object that goes on past its end: its JSON stops at the line's
    end, not at a mistake inside it."""
    text = line.decode("utf-8-sig", errors="replace").strip()
    if not text.startswith("{"):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return exc.pos >= len(text)
    return False


def _one_json_value(path: Path, first: bytes) -> bool:
    """Whether a file whose first line opens an object is one pretty-printed JSON value: that line is
    `{` alone, or the whole file (under _WHOLE_JSON_BYTES) parses. Otherwise its first line is a row cut
    short, a bad row like any other (skip_bad_rows skips it), not a reason to refuse the file."""
    if first.decode("utf-8-sig", errors="replace").strip() == "{":
        return True
    if path.stat().st_size >= _WHOLE_JSON_BYTES:
        return False
    try:
        json.loads(path.read_bytes().decode("utf-8-sig"))
    except ValueError:  # a JSONDecodeError or a UnicodeDecodeError
        return False
    return True


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line


def strict_json(raw: str | bytes) -> Any:
    """One JSON row, refusing what json.loads lets through silently: a key given twice (it keeps the
    last), NaN / Infinity literals, numbers too large for a float (1e400 became the answer "inf") and
    strings with lone surrogates (which crash later, at tokenisation). ValueError saying which."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"the key {key!r} is given twice")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON (a non-standard literal)")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text} is too large for a float")
        return value

    row = json.loads(raw, object_pairs_hook=pairs, parse_constant=constant, parse_float=number)
    _check_strings(row)
    return row


def _check_strings(node: Any) -> None:
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"a string holds a lone surrogate (not Unicode text): {node!r:.60}") from None
    elif isinstance(node, Mapping):
        for key, value in node.items():
            _check_strings(key)
            _check_strings(value)
    elif isinstance(node, list):
        for value in node:
            _check_strings(value)


def open_rows(cfg: MathDataConfig) -> tuple[str, str, Iterator[tuple[int, Any]]]:
    """(how errors name the source, 'line' or 'row', its numbered rows: JSON Lines as bytes, others
    as dicts)."""
    source = resolve_source(cfg)
    if not isinstance(source, Path):
        return f"{source[0]}[{source[2]}]", "row", hf_rows(*source)
    if source.is_dir():
        where, rows = folder_rows(source, cfg)
        return where, "row", rows
    if source.suffix.lower() in _TABLES:
        return str(source), "row", table_rows(source)
    return str(source), "line", file_rows(source)
