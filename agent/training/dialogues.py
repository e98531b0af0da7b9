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


# -- natural phrasing, refusals and sessions of several questions (`duplex data synth --mix listen`) ----------
LISTEN_KINDS = {  # relative frequency of each kind of turn in a listening session
    "add": 2.0, "sub": 1.5, "count": 1.0, "spell": 1.2, "greet": 0.8, "see": 1.0, "colour": 0.8, "howmany": 1.0,
    "refuse_near": 2.2, "refuse_out": 1.8, "passage": 0.6,
}
VISION_KINDS = ("see", "colour", "howmany")
SESSION_TURNS = (1, 3)  # questions per listening session unless `data synth --turns` says otherwise


def sample_turn(rng: random.Random, scene: Scene | None, split: str = "train", kind: str | None = None) -> QA:
    """One question of a session, phrased as people ask it (`split`: "train" or "held_out" phrasings).

    Vision questions with no `scene` shown get NOTHING_SEEN; requests outside the domain get REFUSAL; a read
    passage gets no answer (empty answer: the agent stays silent)."""
    from agent.training import phrasing as ph
    from agent.training import phrasing_grammar as grammar

    def composed() -> bool:  # training draws only: half from the composed grammar
        return split == "train" and rng.random() < ph.COMPOSED_SHARE

    split_in_lists = ph.listed(split)

    if kind is None:
        kinds = list(LISTEN_KINDS)
        kind = rng.choices(kinds, weights=[LISTEN_KINDS[k] for k in kinds])[0]
    if kind == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        q = ph.phrase(kind, split, rng, a=NUMBERS[a], b=NUMBERS[b])
        return QA(kind, q, f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}", [NUMBERS[a + b]])
    if kind == "sub":
        a = rng.randint(1, 9)
        b = rng.randint(0, a)
        q = ph.phrase(kind, split, rng, a=NUMBERS[a], b=NUMBERS[b])
        return QA(kind, q, f"{NUMBERS[a]} minus {NUMBERS[b]} is {NUMBERS[a - b]}", [NUMBERS[a - b]])
    if kind == "count":
        n = rng.randint(2, 6)
        return QA(kind, ph.phrase(kind, split, rng, n=NUMBERS[n]), " ".join(NUMBERS[1:n + 1]), [NUMBERS[n]])
    if kind == "spell":
        w = rng.choice(WORDS)
        return QA(kind, ph.phrase(kind, split, rng, w=w), f"{w} is spelled {' '.join(w)}", list(w))
    if kind == "greet":
        intent = rng.choice(list(ph.GREETING_INTENTS))
        answer, phrasings = ph.GREETING_INTENTS[intent]
        q = (grammar.greeting(intent, rng) if composed() else rng.choice(phrasings[split_in_lists]))
        return QA(kind, q, answer, answer.split()[:1])
    if kind in VISION_KINDS:
        shape = scene.shape if scene else rng.choice(SHAPES)
        q = ph.phrase(kind, split, rng, s=shape, ss=shape + "s")
        if scene is None:
            return QA("unseen", q, ph.NOTHING_SEEN, ["not", "anything"], extra={"asked": kind})
        plural = scene.shape + ("s" if scene.count > 1 else "")
        if kind == "see":
            return QA(kind, q, f"i see {NUMBERS[scene.count]} {scene.colour} {plural}",
                      [NUMBERS[scene.count], scene.colour], scene)
        if kind == "colour":
            return QA(kind, q, f"it is {scene.colour}", [scene.colour], scene)
        return QA(kind, q, f"there are {NUMBERS[scene.count]}", [NUMBERS[scene.count]], scene)
    if kind == "refuse_near":
        values = dict(a=NUMBERS[rng.randint(2, 9)], b=NUMBERS[rng.randint(2, 9)],
                      w=rng.choice(ph.values(ph.UNSPELLABLE, split)),
                      n=rng.choice(ph.values(ph.FAR_COUNTS, split)), s=rng.choice(SHAPES))
        if composed():  # the frames of its own questions, with what it cannot do in them
            values["c"] = NUMBERS[rng.randint(2, 9)]
            near = rng.choices(["near_arith", "spell", "count", "near_scene"], weights=[5, 2, 2, 1])[0]
            q = grammar.compose(near, rng, **values)
        else:
            q = rng.choice(ph.NEAR_DOMAIN[split_in_lists]).format(**values)
        return QA(kind, q, ph.REFUSAL, ["sorry"])
    if kind == "refuse_out":
        q = grammar.out_of_domain(rng) if composed() else rng.choice(ph.OUT_OF_DOMAIN[split_in_lists])
        return QA(kind, q, ph.REFUSAL, ["sorry"])
    if kind == "passage":
        return QA(kind, grammar.passage(rng) if composed() else rng.choice(ph.PASSAGES[split_in_lists]), "", [])
    raise ValueError(f"unknown kind {kind}")
