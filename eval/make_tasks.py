"""Writes the JSONL data of the local lm-eval tasks in eval/data/ (deterministic: a fixed seed).
Multiple choice, one file per category: {"question", "choices", "label"}; the choice follows the
question after a space. Generation: eval/data/qa.jsonl, {"question", "answer"}.
Usage: python3 eval/make_tasks.py
"""
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens",
    "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Poland": "Warsaw", "Ireland": "Dublin", "Belgium": "Brussels",
    "Hungary": "Budapest", "Czechia": "Prague", "Thailand": "Bangkok", "South Korea": "Seoul",
    "Indonesia": "Jakarta", "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago",
    "Colombia": "Bogota", "Mexico": "Mexico City", "Canada": "Ottawa", "Australia": "Canberra",
    "Kenya": "Nairobi", "Iran": "Tehran", "Iraq": "Baghdad", "Turkey": "Ankara",
    "Ukraine": "Kyiv", "Romania": "Bucharest", "Cuba": "Havana", "Vietnam": "Hanoi",
    "Philippines": "Manila", "India": "New Delhi", "Pakistan": "Islamabad", "Nigeria": "Abuja",
    "Ethiopia": "Addis Ababa", "Saudi Arabia": "Riyadh", "Iceland": "Reykjavik",
    "the United Kingdom": "London", "the United States": "Washington", "Brazil": "Brasilia",
    "Switzerland": "Bern", "the Netherlands": "Amsterdam",
}

OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
    "open": "closed", "young": "old", "rich": "poor", "early": "late", "wet": "dry", "hard": "soft",
    "full": "empty", "strong": "weak", "high": "low", "good": "bad", "day": "night", "yes": "no",
    "in": "out", "left": "right", "black": "white", "win": "lose", "push": "pull", "buy": "sell",
    "start": "finish", "true": "false", "loud": "quiet", "heavy": "light", "clean": "dirty",
    "thick": "thin", "wide": "narrow", "long": "short", "above": "below", "first": "last",
    "north": "south", "east": "west", "inside": "outside", "before": "after", "alive": "dead",
    "love": "hate", "cheap": "expensive", "safe": "dangerous", "sweet": "sour", "friend": "enemy",
    "question": "answer", "remember": "forget", "always": "never", "top": "bottom",
    "front": "back", "asleep": "awake",
}

PLURALS = {
    "child": "children", "mouse": "mice", "man": "men", "woman": "women", "foot": "feet",
    "tooth": "teeth", "goose": "geese", "person": "people", "ox": "oxen", "sheep": "sheep",
    "fish": "fish", "deer": "deer", "leaf": "leaves", "knife": "knives", "wife": "wives",
    "wolf": "wolves", "half": "halves", "life": "lives", "city": "cities", "baby": "babies",
    "party": "parties", "story": "stories", "lady": "ladies", "box": "boxes", "bus": "buses",
    "church": "churches", "dish": "dishes", "glass": "glasses", "watch": "watches", "fox": "foxes",
    "cat": "cats", "dog": "dogs", "book": "books", "car": "cars", "tree": "trees", "house": "houses",
    "apple": "apples", "bird": "birds", "day": "days", "boy": "boys", "key": "keys", "toy": "toys",
    "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "cactus": "cacti",
    "phenomenon": "phenomena", "crisis": "crises", "louse": "lice", "cow": "cows",
}

QA = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"), ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Russia?", "Moscow"), ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of the United Kingdom?", "London"), ("What is 3 + 4?", "7"),
    ("What is 5 + 5?", "10"), ("What is 9 - 3?", "6"), ("What is 6 + 2?", "8"),
    ("What is the opposite of hot?", "Cold"), ("What is the opposite of big?", "Small"),
    ("What is the plural of mouse?", "Mice"), ("What day comes after Monday?", "Tuesday"),
    ("What color is the sky on a clear day?", "Blue"),
]


def choices(rng, answer, pool):
    """The answer and three distinct distractors from pool, shuffled; returns (choices, label)."""
    others = sorted({p for p in pool if p != answer})
    picked = [answer] + rng.sample(others, 3)
    rng.shuffle(picked)
    return picked, picked.index(answer)


def item(question, choices_label):
    picked, label = choices_label
    return {"question": question, "choices": picked, "label": label}


def arithmetic(rng):
    pairs = sorted(rng.sample([(a, b) for a in range(1, 10) for b in range(1, 10)], 50))
    out = []
    for a, b in pairs:
        s = a + b
        pool = [str(s + d) for d in (-3, -2, -1, 1, 2, 3) if s + d >= 0]
        out.append(item(f"{a} + {b} =", choices(rng, str(s), pool)))
    return out


def sequences(rng):
    out = []
    for _ in range(50):
        start, step = rng.randint(1, 20), rng.choice([1, 2, 3, 5, 10])
        terms = [start + i * step for i in range(5)]
        nxt = terms[-1]
        pool = [str(nxt + d) for d in (-step, -1, 1, step, 2 * step)]
        out.append(item(", ".join(map(str, terms[:4])) + ",", choices(rng, str(nxt), pool)))
    return out


def capitals(rng):
    return [item(f"The capital of {c} is", choices(rng, cap, CAPITALS.values())) for c, cap in CAPITALS.items()]


def opposites(rng):
    return [item(f"The opposite of {w} is", choices(rng, o, OPPOSITES.values())) for w, o in OPPOSITES.items()]


def plurals(rng):
    out = []
    for w, p in PLURALS.items():
        pool = [w, w + "s", w + "es", w + "en", w[:-1] + "ies" if w.endswith("y") else w + "ses"]
        out.append(item(f"The plural of {w} is", choices(rng, p, pool)))
    return out


def write(name, rows):
    with open(OUT / f"{name}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    OUT.mkdir(exist_ok=True)
    for name, make in [("arithmetic", arithmetic), ("sequences", sequences), ("capitals", capitals),
                       ("opposites", opposites), ("plurals", plurals)]:
        write(name, make(random.Random(name)))
    write("qa", [{"question": q, "answer": a} for q, a in QA])


if __name__ == "__main__":
    main()
