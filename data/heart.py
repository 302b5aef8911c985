"""Heart filter: a cardiology lexicon with word-boundary matching, mapped to the paper's 14 themes.

    python -m data.heart "I take warfarin for atrial fibrillation"      # prints the label

`classify(text)` sums the weights of the matched terms; a text is heart-related when the score reaches `THRESHOLD`.
Ambiguous words ("heart" alone, "pulse", "stroke", "aspirin") weigh less than specific terms, so one of them alone
does not make a text heart-related. Abbreviations (MI, AF, BP, HF, ...) match case-sensitively, words do not.
Precision/recall on a hand-labelled development set is in docs/data.md (tests/test_heart.py recomputes it).
An LLM classifier with the paper's keyword verification is `llm_classify` (same OpenAI-compatible client as the judge).
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

THEMES = {  # slug -> the paper's theme name
    "cardiac_medications": "Cardiac Medications", "cardiomyopathy": "Cardiomyopathy",
    "cardiovascular_disease": "Cardiovascular Disease", "cv_risk_factors": "CV Risk Factors",
    "chest_pain": "Chest Pain", "congenital_hd": "Congenital HD", "cad": "CAD",
    "ecg_interpretation": "ECG/EKG Interpretation", "heart_attack": "Heart Attack", "heart_failure": "Heart Failure",
    "palpitations": "Palpitations", "arrhythmia": "Arrhythmia", "valve_problems": "Valve Problems",
    "hypertension": "Hypertension",
}
THRESHOLD = 1.0

# theme -> {term: weight}. Terms are regex fragments matched on word boundaries; "s?" plurals are added for words.
_WORDS = {
    "cardiac_medications": {
        "statin": 1, "atorvastatin": 1, "rosuvastatin": 1, "simvastatin": 1, "anticoagulant": 1, "anticoagulation": 1,
        "blood thinner": 1, "warfarin": 1, "apixaban": 1, "rivaroxaban": 1, "dabigatran": 1, "edoxaban": 1,
        "clopidogrel": 1, "ticagrelor": 1, "antiplatelet": 1, "beta[- ]blocker": 1, "metoprolol": 1, "bisoprolol": 1,
        "carvedilol": 1, "atenolol": 1, "ace inhibitor": 1, "lisinopril": 1, "ramipril": 1, "enalapril": 1,
        "losartan": 1, "valsartan": 1, "amlodipine": 1, "digoxin": 1, "amiodarone": 1, "nitroglycerine?": 1,
        "sacubitril": 1, "entresto": 1, "spironolactone": 0.5, "furosemide": 0.5, "diuretic": 0.5, "aspirin": 0.5,
        "propranolol": 0.5,
    },
    "cardiomyopathy": {"cardiomyopathy": 1, "cardiomyopathies": 1, "myocarditis": 1, "takotsubo": 1},
    "cardiovascular_disease": {
        "cardiovascular": 1, "heart disease": 1, "cardiac": 1, "cardiologist": 1, "cardiology": 1, "heart": 0.5,
        "cardiac arrest": 1, "cardiopulmonary": 1, "pericarditis": 1, "endocarditis": 1, "atherosclerosis": 1,
        "peripheral arter(?:y|ial) disease": 1, "aortic": 1, "aorta": 1, "echocardiogram": 1, "stroke": 0.5,
        "deep vein thrombosis": 0.5, "pulmonary embolism": 0.5, "aneurysm": 0.5, "vascular": 0.5,
        "cholesterol": 0.5, "hypotension": 0.5, "circulation": 0.5,
        # a few cardiology words in the languages of the HealthBench sample
        "cardiaque": 1, "cardíac[oa]": 1, "coração": 1, "corazón": 1, "herz": 0.5,
    },
    "cv_risk_factors": {
        "hyperlipidemia": 1, "dyslipidemia": 1, "hypercholesterolemia": 1, "triglycerides": 0.5, "ascvd": 1,
        "framingham": 1, "cardiovascular risk": 1,
    },
    "chest_pain": {"chest pain": 1, "chest tightness": 1, "chest pressure": 1, "chest discomfort": 1, "angina": 1,
                   "tight chest": 1},
    "congenital_hd": {"congenital heart": 1, "septal defect": 1, "tetralogy of fallot": 1, "patent foramen ovale": 1,
                      "coarctation": 1, "hole in the heart": 1, "ductus arteriosus": 1},
    "cad": {"coronary": 1, "stent": 1, "angioplasty": 1, "bypass surgery": 0.5},
    "ecg_interpretation": {"electrocardiogram": 1, "qtc?": 1, "st[- ]elevation": 1, "st[- ]depression": 1,
                           "t[- ]wave": 1, "qrs": 1, "holter": 1, "sinus rhythm": 1},
    "heart_attack": {"heart attack": 1, "myocardial infarction": 1, "acute coronary syndrome": 1, "troponin": 1},
    "heart_failure": {"heart failure": 1, "ejection fraction": 1, "cardiac output": 1, "nt-probnp": 1,
                      "orthopnea": 1, "bnp": 1},
    "palpitations": {"palpitation": 1, "heart racing": 1, "racing heart": 1, "skipp?ed (?:a )?beat": 1,
                     "heart skipping": 1, "pounding heart": 1, "heart pounding": 1, "fluttering": 0.5},
    "arrhythmia": {
        "arrhythmia": 1, "arrhythmias": 1, "atrial fibrillation": 1, "a-?fib": 1, "atrial flutter": 1,
        "tachycardia": 1, "bradycardia": 1, "ventricular fibrillation": 1, "pacemaker": 1, "defibrillator": 1,
        "heart block": 1, "long qt": 1, "heart rate": 0.5, "syncope": 0.5, "fainting": 0.5, "ablation": 0.5,
        "pulse": 0.3,
    },
    "valve_problems": {"aortic stenosis": 1, "mitral": 1, "murmur": 1, "tavr": 1, "tavi": 1, "valve replacement": 1,
                       "heart valve": 1, "valvular": 1, "regurgitation": 0.3},
    "hypertension": {"hypertension": 1, "hypertensive": 1, "high blood pressure": 1, "blood pressure": 1,
                     "systolic": 1, "diastolic": 1, "mm ?hg": 0.5, "preeclampsia": 0.5, "hipertensi[oó]n": 1,
                     "hipertensão": 1, "pressão arterial": 1, "presión arterial": 1, "tension artérielle": 1},
}
_ABBREVIATIONS = {  # case-sensitive
    "cardiac_medications": {"DOACs?": 1, "NOACs?": 1, "ARBs?": 0.5, "INR": 0.5, "SGLT2i?": 0.5, "GTN": 1},
    "cardiomyopathy": {"HCM": 1, "DCM": 1},
    "cardiovascular_disease": {"CVD": 1, "PAD": 0.5, "DVT": 0.5, "CPR": 0.5, "AED": 0.5, "TIA": 0.5},
    "cv_risk_factors": {"LDL": 0.5, "HDL": 0.5},
    "congenital_hd": {"ASD": 0.5, "VSD": 1, "PFO": 1, "PDA": 0.5},
    "cad": {"CAD": 1, "PCI": 1, "CABG": 1},
    "ecg_interpretation": {"ECGs?": 1, "EKGs?": 1},
    "heart_attack": {"MI": 1, "STEMI": 1, "NSTEMI": 1, "ACS": 1},
    "heart_failure": {"CHF": 1, "HFrEF": 1, "HFpEF": 1, "HF": 1, "LVEF": 1},
    "arrhythmia": {"AF": 1, "AFib": 1, "SVT": 1, "VT": 0.5, "VF": 0.5, "ICD": 0.5},
    "hypertension": {"HTN": 1, "BP": 1},
}
# Longer terms win a theme over the shorter terms they contain ("heart attack" counts once, not also as "heart").
_ORDER = sorted(((t, th, w, False) for th, d in _WORDS.items() for t, w in d.items()), key=lambda x: -len(x[0])) + \
         [(t, th, w, True) for th, d in _ABBREVIATIONS.items() for t, w in d.items()]
_WORD_RE = [(re.compile(rf"(?<![\w-]){t}s?(?![\w])", re.IGNORECASE), t, th, w) for t, th, w, ab in _ORDER if not ab]
# "ICD-10" is a billing code, "AF" inside "AF-" ranges is rare; an abbreviation is not followed by "-<digit>".
_ABBR_RE = [(re.compile(rf"(?<![\w-]){t}(?![\w]|-\d)"), t, th, w) for t, th, w, ab in _ORDER if ab]


@dataclass(frozen=True)
class HeartLabel:
    related: bool
    theme: str | None  # a key of THEMES, or None when not related
    terms: tuple = ()  # the matched surface strings, in order of first occurrence
    score: float = 0.0


def classify(text: str, threshold: float = THRESHOLD) -> HeartLabel:
    """Lexicon label of one text. The theme is the one with the largest matched weight (ties: first matched)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    taken = [False] * len(text)  # characters already claimed by a longer term
    hits = []  # (position, surface, theme, weight)
    for pattern, _, theme, weight in _WORD_RE + _ABBR_RE:
        for m in pattern.finditer(text):
            if any(taken[m.start():m.end()]):
                continue
            taken[m.start():m.end()] = [True] * (m.end() - m.start())
            hits.append((m.start(), m.group(0), theme, weight))
    hits.sort()
    # the score counts each distinct term once, so a long text repeating "heart" is not heart-related by volume alone
    distinct = {}
    for _, surface, theme, weight in hits:
        distinct.setdefault(surface.lower(), (theme, weight))
    score = sum(w for _, w in distinct.values())
    by_theme: dict[str, float] = {}
    for theme, w in distinct.values():
        by_theme[theme] = by_theme.get(theme, 0.0) + w
    related = score >= threshold
    theme = max(by_theme, key=lambda t: by_theme[t]) if related else None  # dict order = first occurrence on ties
    terms = tuple(dict.fromkeys(s for _, s, _, _ in hits))
    return HeartLabel(related, theme, terms, round(float(score), 6))


def sample_text(sample) -> str:
    """What the filter reads for a Sample: the user's turns (assistant turns are model text that may list heart
    conditions as differentials for an unrelated question; the rubric is not part of the question)."""
    return "\n".join(m["content"] for m in sample.prompt if m.get("role") == "user" and isinstance(m.get("content"), str))


LLM_PROMPT = (
    "Decide whether the medical question below is related to the heart or the cardiovascular system. Answer with a "
    "JSON object: {\"heart_related\": true|false, \"theme\": one of " + json.dumps(list(THEMES.values())) +
    " or null, \"keywords\": [words copied exactly from the question that show it]}.\n\nQuestion:\n"
)


async def llm_classify(client, model: str, text: str, *, cache: dict | None = None) -> HeartLabel:
    """The paper's LLM classifier: label, theme and keywords from a chat model, kept only if at least one returned
    keyword occurs verbatim in the text (its guard against hallucinated labels). `client` is an openai.AsyncOpenAI;
    `cache` (text -> HeartLabel) avoids asking twice. An unparsable reply is a negative label, not an error."""
    if cache is not None and text in cache:
        return cache[text]
    resp = await client.chat.completions.create(model=model, temperature=0.0,
                                                messages=[{"role": "user", "content": LLM_PROMPT + text}])
    label = parse_llm_label(resp.choices[0].message.content or "", text)
    if cache is not None:
        cache[text] = label
    return label


def parse_llm_label(reply: str, text: str) -> HeartLabel:
    """Parse the classifier's JSON reply (possibly inside a code fence) and verify its keywords against `text`."""
    m = re.search(r"\{.*\}", reply, re.DOTALL)
    try:
        obj = json.loads(m.group(0)) if m else {}
    except json.JSONDecodeError:
        obj = {}
    if not isinstance(obj, dict):
        obj = {}
    words = obj.get("keywords") if isinstance(obj.get("keywords"), list) else []
    found = tuple(w for w in words if isinstance(w, str) and w.strip() and w.lower() in text.lower())
    related = obj.get("heart_related") is True and bool(found)
    names = {v.lower(): k for k, v in THEMES.items()} | {k: k for k in THEMES}
    theme = names.get(str(obj.get("theme", "")).lower()) if related else None
    return HeartLabel(related, theme, found, float(len(found)))


if __name__ == "__main__":
    print(classify(" ".join(sys.argv[1:]) or sys.stdin.read()))
