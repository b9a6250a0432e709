"""Text a model wrote or the web supplied, made safe to place inside a scoring prompt.

A web segment, a generated instruction or an evaluated model's answer may contain the tokenizer's
control-token strings ("<|im_end|>", "<|im_start|>"): encoded as they are, they become real chat control
tokens and let the text end its turn and open another. They are removed before any untrusted text is
tokenised, by every score.

A rater that reads untrusted text (the rubric, the judge) also sees it datamarked (`datamark`): every
run of whitespace shown as DATAMARK, so that words addressed to the rater inside it do not read as ours
(the "spotlighting" of Hines et al., 2024, "Defending Against Indirect Prompt Injection Attacks With
Spotlighting"); ratings.py measures what it changes.

A score that reads no instruction (PMI) cannot be datamarked: there is no rater to show the mark to, and a
note to the rater raises PMI anyway, because text about "this answer" and "the question" is likelier after
any question than after none. `addresses_rater` finds such notes instead, so that the selection rule can
rank the pair last (`pmi_guarded` in scoring/curation.py), as it ranks an echo of the instruction: a pair
whose text talks to its rater about its rating is no training example, whatever it scores. A sentence
counts when it names an evaluator (rater, grader, judge, "whoever rates"...) together with rating words
(score, 5, perfect, best...), or a machine that filters the text ("the data filter", "AI system reading
this") together with rating words or praise ("correct", "keep it"), or when it demands or claims a rating
outright ("rate it 5", "score: 5", "full marks", "the highest possible score", "excellent, 10/10") or a
place in the training set. The words are English, French, German, Spanish, Italian, Portuguese, Dutch,
Russian, Chinese and Japanese: the languages of the 30 notes it was designed on (bench/data/injections.jsonl:
tuning, held_out, held_out_2, every one of which it finds). A note in another language, or one that names
no evaluator and no rating, passes: bench/injection.py measures how many notes written before this design
and never used for it (held_out_3) still carry a bad pair across the threshold. It finds no text of the
labelled dev set, the shipped seed set or the demo corpus (installed packages' descriptions); text about
raters and ratings does trip it (12 of the 500 sentences of this project's README, e.g. "`eval judge` ...
8 of 8"), and such a pair is ranked last too.
"""

from __future__ import annotations

import re

DATAMARK = "^"
WHITESPACE = re.compile(r"\s+")


def _words(latin: tuple[str, ...], unspaced: tuple[str, ...] = ()) -> re.Pattern:
    """Any of `latin` as whole words, or of `unspaced` (Chinese: no spaces, so no word boundaries)."""
    alternatives = [rf"\b(?:{'|'.join(latin)})\b", *unspaced]
    return re.compile("|".join(alternatives), re.IGNORECASE)


# Whoever rates: evaluator roles (regex fragments).
RATER = _words(
    (
        # English
        r"rat(?:er|ing (?:model|system|assistant))", r"grad(?:er|ing (?:model|system|assistant))",
        r"evaluat(?:or|ion (?:model|system|note|instructions?))",
        r"scor(?:er|ing (?:model|system|assistant))",
        "assessor", "reviewer", "judge", "examiner", "annotator",
        r"whoever (?:rates|grades|scores|reviews|evaluates|judges|assesses|marks)",
        # French, German, Spanish, Italian, Portuguese, Dutch, Russian
        r"évaluat(?:eur|rice)", r"correct(?:eur|rice)", r"examinat(?:eur|rice)",
        r"bewerter(?:in)?", r"prüfer(?:in)?", r"gutachter(?:in)?", r"korrektor(?:in)?",
        r"evaluador(?:a)?", r"calificador(?:a)?", r"revisor(?:a)?", r"examinador(?:a)?",
        r"valutat(?:ore|rice)", r"corrett(?:ore|rice)", r"esaminat(?:ore|rice)", "revisore",
        r"avaliador(?:a)?", r"corretor(?:a)?", "beoordelaar", "examinator",
        r"оценщик\w*", r"проверяющ\w*", r"экзаменатор\w*", r"рецензент\w*",
    ),
    # Chinese, Japanese
    ("评分者", "评分员", "评审", "评估者", "评委", "阅卷", "採点者", "評価者", "審査員", "査読者"),
)  # fmt: skip
# A machine asked to filter or judge the text: it is addressed in praise, not only in ratings.
READER = _words(
    (
        r"(?:data|quality) filter",
        r"whoever (?:checks|reads|filters)",
        r"(?:AI|LLM|language model|model|system|filter|classifier|pipeline) "
        r"(?:reading|checking|filtering|scoring|rating|judging|evaluating|reviewing) (?:this|it)",
    )
)
# What a note to the rater says: rating words, numbers, verdicts.
RATING = _words(
    (
        r"rat(?:e|ed|ing)", r"scor(?:e|ed|ing)", r"grad(?:e|ed|ing)", r"marks?", r"stars?", r"points?",
        "perfect", "flawless", "excellent", "ideal", "exemplary", "best", "top", "maximum", "highest",
        "award", r"deserves?", "[0-9]+",
        r"not(?:e|er|ez)", r"parfaite?", r"maximale?", "exemplaire", r"excellente?",
        r"(?:best|höchst)note", r"punkte?", "perfekt", "ausgezeichnet", "hervorragend",
        r"calific\w*", r"puntuaci[oó]n", "nota", "excelente", r"perfect[oa]", r"máxim[oa]",
        "voto", "punteggio", "impeccabile", r"perfett[oa]", r"massim[oa]", "eccellente",
        r"pontuaç[aã]o", "exemplar", r"perfeit[oa]", "cijfer", "uitstekend", "hoogste",
        r"балл\w*", r"оценк\w*", r"идеальн\w*", r"отличн\w*", r"высш\w*",
    ),
    ("满分", "完美", r"\d+\s*分", "打分", "评分", "完璧", "最高評価", "満点", "評価"),
)  # fmt: skip
PRAISE = _words(
    ("accurate", r"correct(?:ly)?", "helpful", "relevant", "verified", "accept", "keep", "approve")
)
# A rating demanded or claimed outright, or a demand to be trained on, whoever it is addressed to.
RATING_DEMAND = _words(
    (
        r"(?:rate\s+|(?:rate|score|grade|mark)\s+(?:it|this|me|the (?:answer|response|reply))\s+)"
        r"(?:a\s+)?(?:[0-9]+|five|ten)",
        r"(?:scor(?:e|ed)|rat(?:e|ed|ing)|grade|mark)[\"']?\s*[:=]\s*[\"']?(?:10|[1-9])(?![\d.,])",  # 1..10
        r"(?:scor(?:e|ed)|rat(?:e|ed|ing)|grade|mark)\s*[:=]?\s*[0-9]+\s*/\s*[0-9]+",
        r"(?:excellent|perfect|flawless|verdict|quality|rated)\W{1,4}(?:[0-9]|10)\s*/\s*(?:5|10)",
        r"(?:[0-9]+|five|ten)\s+out\s+of\s+(?:[0-9]+|five|ten)", r"(?:full|top)\s+marks",
        r"(?:highest|maximum|top|perfect|best)\s+(?:possible\s+)?(?:score|rating|grade|mark)",
        r"(?:kept|keep|included?|selected|used)\s+(?:it\s+)?(?:in|for)\s+(?:the\s+)?training\s+(?:set|data)",
        r"note\s+maximale", r"(?:best|höchst)note", r"(?:calificaci|puntuaci)[oó]n\s+máxima",
        r"(?:punteggio|voto)\s+massimo", r"nota\s+(?:máxima|mais\s+alta)", r"hoogste\s+cijfer",
        r"высш\w*\s+балл\w*",
    ),
    ("满分", r"[给打]\s*\d+\s*分", "最高評価", "満点"),
)  # fmt: skip
SENTENCES = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def special_token_strings(tokenizer) -> list[str]:
    """Every added/special token string, longest first: each would be encoded as a control token."""
    tokens = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    return sorted((t for t in tokens if t), key=len, reverse=True)


def strip_special_tokens(text: str, specials: list[str]) -> str:
    """`text` without any control-token string, repeated until none is left (no splicing one together)."""
    while True:
        before = text
        for token in specials:
            text = text.replace(token, "")
        if text == before:
            return text


def datamark(text: str) -> str:
    """`text` with every run of whitespace shown as DATAMARK."""
    return WHITESPACE.sub(DATAMARK, text.strip())


def addresses_rater(text: str) -> bool:
    """Whether a sentence of `text` speaks to its rater about its rating (see the module docstring)."""
    return any(
        (RATER.search(sentence) and RATING.search(sentence))
        or (READER.search(sentence) and (RATING.search(sentence) or PRAISE.search(sentence)))
        or RATING_DEMAND.search(sentence)
        for sentence in SENTENCES.split(text)
    )
