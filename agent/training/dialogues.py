"""The conversation domain of the default model: short spoken questions and their exact answers.

Everything is drawn from a seeded RNG, so a dataset is a pure function of its seed. Vision questions come with
a scene (shapes of one colour) that `scenes.render` turns into an image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
WORDS = ["cat", "dog", "sun", "red", "box", "hat", "pen", "cup", "map", "bus", "egg", "fox"]
COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
GREETINGS = [("hello", "hello there how can i help"), ("hi there", "hi how are you"),
             ("good morning", "good morning to you"), ("thank you", "you are welcome"),
             ("good bye", "good bye see you soon")]


@dataclass
class Scene:
    shape: str
    colour: str
    count: int


@dataclass
class QA:
    kind: str
    question: str
    answer: str
    key: list[str]  # words that must appear in the answer's text stream for it to count as correct
    scene: Scene | None = None
    extra: dict = field(default_factory=dict)


def sample_qa(rng: random.Random, vision: bool = True) -> QA:
    kinds = ["add", "sub", "count", "spell", "greet"] + (["see", "colour", "howmany"] if vision else [])
    kind = rng.choice(kinds)
    if kind == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return QA(kind, f"what is {NUMBERS[a]} plus {NUMBERS[b]}", f"{NUMBERS[a]} plus {NUMBERS[b]} is "
                  f"{NUMBERS[a + b]}", [NUMBERS[a + b]])
    if kind == "sub":
        a = rng.randint(1, 9)
        b = rng.randint(0, a)
        return QA(kind, f"what is {NUMBERS[a]} minus {NUMBERS[b]}", f"{NUMBERS[a]} minus {NUMBERS[b]} is "
                  f"{NUMBERS[a - b]}", [NUMBERS[a - b]])
    if kind == "count":
        n = rng.randint(2, 6)
        seq = " ".join(NUMBERS[1:n + 1])
        return QA(kind, f"count to {NUMBERS[n]}", seq, [NUMBERS[n]])
    if kind == "spell":
        w = rng.choice(WORDS)
        return QA(kind, f"spell the word {w}", f"{w} is spelled {' '.join(w)}", list(w))
    if kind == "greet":
        q, a = rng.choice(GREETINGS)
        return QA(kind, q, a, a.split()[:1])
    scene = Scene(rng.choice(SHAPES), rng.choice(COLOURS), rng.randint(1, 4))
    plural = scene.shape + ("s" if scene.count > 1 else "")
    if kind == "see":
        return QA(kind, "what do you see", f"i see {NUMBERS[scene.count]} {scene.colour} {plural}",
                  [NUMBERS[scene.count], scene.colour], scene)
    if kind == "colour":
        return QA(kind, f"what colour is the {scene.shape}", f"it is {scene.colour}", [scene.colour], scene)
    return QA(kind, f"how many {scene.shape}s are there", f"there are {NUMBERS[scene.count]}",
              [NUMBERS[scene.count]], scene)
