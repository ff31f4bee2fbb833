"""Rule checks: RLVR's reward, and the independent measure logged for every run.

A rule maps (response, reference) to 1.0 or 0.0 without asking any model. `RULES` names
them for the trainer's `rule` field; reference-free rules ignore the reference.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number in `text` ("1,234.5" counts as 1234.5), or None."""
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def plain(text: str) -> str:
    """Case- and accent-folded text: 'Brasília' -> 'brasilia'."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def reference_rule(response: str, reference: str | None) -> float:
    """The response matches the reference answer.

    A reference with a number: the response's last number must equal it. Otherwise the
    reference must appear in the response as whole words, ignoring case and accents
    ("Bogota" matches "the capital is Bogotá.").
    """
    if reference is None:
        raise ValueError("the 'reference' rule needs a 'reference' on every data row")
    truth = last_number(reference)
    if truth is not None:
        answer = last_number(response)
        return 1.0 if answer is not None and math.isclose(answer, truth, rel_tol=1e-9, abs_tol=1e-9) else 0.0
    words = plain(reference).split()
    if not words:
        return 0.0
    pattern = r"\b" + r"\s+".join(re.escape(w) for w in words) + r"\b"
    return 1.0 if re.search(pattern, plain(response)) else 0.0


POLITE = re.compile(r"\b(please|thanks?|thank you|sorry|glad|happy to|appreciate|kindly|welcome)\b", re.I)
RUDE = re.compile(r"\b(stupid|idiot|dumb|shut up|whatever|useless|ridiculous|hate)\b", re.I)


def polite_rule(response: str, reference: str | None = None) -> float:
    """A courtesy word appears and no rude word does."""
    return 1.0 if POLITE.search(response) and not RUDE.search(response) else 0.0


# Lines that start with "1." (or "1)"), later "2.", later "3.", each with text after the
# number. Anything may come before item 1 ("Here are three fruits:"), between items (notes,
# sub-bullets) and after item 3 (more items).
_ITEM = r"^[ \t]*{k}[.)][ \t]*\S"
NUMBERED_LIST = re.compile(r".*?".join(_ITEM.format(k=k) for k in (1, 2, 3)), re.M | re.S)


def numbered_list_rule(response: str, reference: str | None = None) -> float:
    """The response holds a numbered list: items 1, 2 and 3 in order, each starting a line."""
    return 1.0 if NUMBERED_LIST.search(response) else 0.0


def judge_verdict_rule(response: str, reference: str | None) -> float:
    """A pairwise judgment's written verdict ("Verdict: A" or "Verdict: B", the last one
    written, as the service parses it) equals the reference label."""
    from rlme.service.judging.templates import PAIRWISE, split_verdict

    if reference not in PAIRWISE.labels:
        raise ValueError(
            f"the 'judge_verdict' rule needs a reference label of {PAIRWISE.labels}, not {reference!r}"
        )
    return 1.0 if split_verdict(response, PAIRWISE.cue, PAIRWISE.labels)[1] == reference else 0.0


RULES: dict[str, Callable[[str, str | None], float]] = {
    "reference": reference_rule,
    "polite": polite_rule,
    "numbered_list": numbered_list_rule,
    "judge_verdict": judge_verdict_rule,
}
NEEDS_REFERENCE = {"reference", "judge_verdict"}
