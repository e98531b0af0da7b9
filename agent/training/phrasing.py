"""How people actually ask: many phrasings per kind of question, and the requests the model must refuse.

Every list is split in three: `train` phrasings feed `duplex data synth`; `held_out` phrasings are only ever
used by the test sets of `duplex bench listening`, never by training or checkpoint choice, so the "natural
rewordings" figure measures phrasings the model has never heard; `select` phrasings (since round 14) are unheard
in training too and make the selection set's rewordings, so that checkpoints can be chosen on how well they
generalise without ever reading a test set.

Answers keep one fixed form per kind (the model must understand many phrasings, and say one thing).
"""

from __future__ import annotations

import random

REFUSAL = "sorry i can not do that"
COMPOSED_SHARE = 0.5  # training draws taken from the composed grammar rather than the fixed lists below
NOTHING_SEEN = "i do not see anything"

# {a} {b}: number words; {n}: a number word; {w}: a word; {s}: a shape (singular); {ss}: its plural
PHRASINGS: dict[str, dict[str, list[str]]] = {
    "add": {
        "train": ["what is {a} plus {b}", "what's {a} plus {b}", "how much is {a} plus {b}", "{a} plus {b}",
                  "can you add {a} and {b}", "please add {a} and {b}", "um what is {a} plus {b}",
                  "what do you get if you add {a} and {b}", "what does {a} plus {b} make",
                  "tell me {a} plus {b}", "what is {a} plus {b} please", "{a} plus {b} is what"],
        "held_out": ["could you tell me what {a} plus {b} is", "hey what's {a} plus {b}", "add {a} and {b}",
                     "so what is {a} plus {b}", "what would {a} plus {b} be", "uh how much is {a} plus {b}"],
        "select": ["what's the total of {a} and {b}", "{a} plus {b} makes what", "do you know {a} plus {b}",
                   "i'd like to know what {a} plus {b} is"],
    },
    "sub": {
        "train": ["what is {a} minus {b}", "what's {a} minus {b}", "how much is {a} minus {b}", "{a} minus {b}",
                  "what is {a} take away {b}", "can you take {b} away from {a}", "um what is {a} minus {b}",
                  "subtract {b} from {a}", "what do you get if you take {b} from {a}", "tell me {a} minus {b}"],
        "held_out": ["could you tell me what {a} minus {b} is", "please subtract {b} from {a}",
                     "hey what's {a} minus {b}", "what would {a} minus {b} be", "uh {a} take away {b}"],
        "select": ["{a} minus {b} makes what", "do you know {a} minus {b}", "what remains if you take {b} from {a}",
                   "i'd like to know what {a} minus {b} is"],
    },
    "count": {
        "train": ["count to {n}", "please count to {n}", "can you count to {n}", "count up to {n}",
                  "count from one to {n}", "um count to {n}", "could you count to {n} for me"],
        "held_out": ["would you count to {n}", "hey count up to {n} please", "let's count to {n}",
                     "can you count from one up to {n}"],
        "select": ["give me a count up to {n}", "count for me up to {n}", "i'd love to hear you count to {n}"],
    },
    "spell": {
        "train": ["spell the word {w}", "how do you spell {w}", "spell {w}", "can you spell {w}",
                  "please spell the word {w}", "how is {w} spelled", "um how do you spell {w}"],
        "held_out": ["what is the spelling of {w}", "could you spell {w} for me", "hey spell the word {w}",
                     "how would you spell {w}"],
        "select": ["give me the spelling of {w}", "spell me the word {w}", "what's the way to spell {w}"],
    },
    "see": {
        "train": ["what do you see", "what can you see", "what are you looking at", "tell me what you see",
                  "describe what you see", "um what do you see"],
        "held_out": ["what's in front of you", "what is in the picture", "can you tell me what you see",
                     "what do you see right now"],
        "select": ["what are you seeing right now", "tell me what is in front of you", "what's visible to you"],
    },
    "colour": {
        "train": ["what colour is the {s}", "what color is the {s}", "which colour is the {s}",
                  "what colour are the {ss}", "tell me the colour of the {s}", "what color are the {ss}"],
        "held_out": ["what is the colour of the {s}", "can you tell me what color the {s} is",
                     "which color are the {ss}", "um what colour is that {s}"],
        "select": ["which colour does the {s} have", "can you name the colour of the {s}",
                   "what colour have the {ss} got"],
    },
    "howmany": {
        "train": ["how many {ss} are there", "how many {ss} do you see", "how many {ss} can you see",
                  "how many {ss}", "um how many {ss} are there"],
        "held_out": ["how many {ss} are in the picture", "can you tell me how many {ss} there are",
                     "what number of {ss} do you see"],
        "select": ["how many {ss} are visible", "can you say how many {ss} you see", "how many {ss} are shown"],
    },
}

# Greetings: each intent's phrasings, and its one answer.
GREETING_INTENTS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "hello": ("hello there how can i help", {"train": ["hello", "hey", "hey there", "hello there"],
                                             "held_out": ["hiya", "hello hello"],
                                             "select": ["hello friend"]}),
    "hi": ("hi how are you", {"train": ["hi there", "hi", "hi again"], "held_out": ["oh hi"],
                              "select": ["hi hi there"]}),
    "morning": ("good morning to you", {"train": ["good morning", "morning"], "held_out": ["good morning there"],
                                              "select": ["morning there"]}),
    "thanks": ("you are welcome", {"train": ["thank you", "thanks", "thanks a lot", "thank you so much"],
                                   "held_out": ["many thanks", "cheers thanks"],
                                   "select": ["thanks very much"]}),
    "bye": ("good bye see you soon", {"train": ["good bye", "bye", "bye bye", "see you later"],
                                      "held_out": ["goodbye for now", "see you"],
                                      "select": ["catch you later"]}),
}

# Requests near the domain that it must refuse (it cannot multiply, divide, spell other words, count far).
# {a} {b}: number words; {w}: a word it cannot spell; {n}: a number beyond its counting range.
NEAR_DOMAIN: dict[str, list[str]] = {
    "train": ["what is {a} times {b}", "what's {a} times {b}", "what is {a} divided by {b}",
              "what is {a} multiplied by {b}", "spell the word {w}", "how do you spell {w}", "count to {n}",
              "count backwards from {a}", "what is {a} plus {b} plus {a}", "what is the square of {a}",
              "what is {a} to the power of {b}", "what shape is it", "is the {s} big"],
    "held_out": ["how much is {a} times {b}", "can you divide {a} by {b}", "could you spell {w} for me",
                 "please count to {n}", "what's {a} squared", "what is half of {a}", "multiply {a} by {b}",
                 "what is {a} percent of {b}", "how big is the {s}", "count down from {a}"],
    "select": ["can you multiply {a} and {b}", "what's {a} times {b} equal to", "give me the spelling of {w}",
               "count all the way up to {n}", "what's {a} over {b}", "what do you get if you multiply {a} by {b}",
               "tell me {a} divided by {b}", "i'd like the spelling of {w}", "count up as far as {n}",
               "what's double {a}"],
}
UNSPELLABLE = {"train": ["elephant", "computer", "banana", "window", "garden", "teacher", "orange", "people"],
               "held_out": ["giraffe", "kitchen", "yellow", "music", "summer", "planet"]}
FAR_COUNTS = {"train": ["twenty", "thirty", "fifty", "a hundred", "twelve"], "held_out": ["forty", "ninety",
                                                                                        "a thousand", "fifteen"]}

# Requests outside the domain altogether.
OUT_OF_DOMAIN: dict[str, list[str]] = {
    "train": ["what is the weather like today", "tell me a story", "turn on the kitchen lights",
              "what time is it", "play some music", "set a timer for five minutes", "who are you",
              "what is the capital of spain", "how are you doing today", "tell me a joke", "call my mother",
              "what's the news today", "book a table for two", "how tall is the eiffel tower",
              "open the front door", "what is your name", "remind me to buy milk", "translate hello into french",
              "who won the game last night", "how far away is the moon", "what should i cook for dinner",
              "turn the volume up", "can you help me with my homework", "where is the nearest station",
              "send a message to john", "what day is it", "do you like dogs", "sing me a song"],
    "held_out": ["what is the capital of france", "what's the weather going to be tomorrow",
                 "turn off the bedroom lights", "tell me something interesting", "how old are you",
                 "order me a pizza", "what is the meaning of life", "who wrote hamlet",
                 "switch on the television", "how do i get to the airport", "what's your favourite colour",
                 "wake me up at seven", "is it going to rain", "explain how a car works",
                 "read me the news", "how many people live in london", "what time does the shop close",
                 "find me a recipe for soup", "can you recommend a film", "lock the back door"],
    "select": ["what's the temperature outside", "play my favourite playlist", "how do i boil an egg",
               "who is the president", "can you order a taxi for me", "turn the heating on",
               "what is the population of japan", "can you tell me what a volcano is", "how long is a marathon",
               "do you know the way to the park", "please close the garage", "what's the speed limit here",
               "tell me what the tide is doing", "can you find my glasses", "what's good to watch tonight",
               "what is the tallest mountain in the world", "could you water the garden",
               "when does the bus come", "what's a good name for a cat", "how do planes stay up"],
}

# Long passages not addressed to the agent (reading aloud, chatter): it stays silent.
PASSAGES: dict[str, list[str]] = {
    "train": ["the old house stood at the end of the lane and nobody had lived there for many years",
              "she walked along the river in the early morning and watched the boats go slowly by",
              "we went to the market on saturday and bought apples bread and a little cheese for lunch",
              "the train was late again so he sat down on the bench and read the paper from cover to cover",
              "in the spring the garden fills with flowers and the birds come back to build their nests",
              "after dinner they played cards by the fire until it was time to go to bed",
              "the meeting ran over by an hour because everyone wanted to talk about the new plan",
              "my brother moved to the coast last year and now he goes swimming every single morning"],
    "held_out": ["the ship left the harbour at dawn with a crew of twelve and a cargo of tea",
                 "it rained all week so the children stayed inside and built a castle out of boxes",
                 "the library closes early on sundays so we usually go there on friday evenings",
                 "he painted the fence white and then sat in the sun to admire his work"],
    "select": ["the bakery on the corner opens at six and sells out of rolls before nine most days",
               "they drove to the mountains for the weekend and hiked until the sun went down",
               "the letter arrived on tuesday but nobody opened it until the following week",
               "grandfather kept bees behind the barn and sold the honey at the summer fair"],
}


def fill(template: str, rng: random.Random, **values: str) -> str:
    return template.format(**values)


def phrase(kind: str, split: str, rng: random.Random, **values: str) -> str:
    """Half of the training draws come from the composed grammar (`phrasing_grammar`), hundreds per kind."""
    if split == "train" and rng.random() < COMPOSED_SHARE:
        from agent.training.phrasing_grammar import compose

        return compose(kind, rng, **values)
    return rng.choice(PHRASINGS[kind][listed(split)]).format(**values)


def listed(split: str) -> str:
    """The split "listed" draws the training lists only (no composed phrasings): sets that must stay as they
    were before the grammar existed, such as the session test set."""
    return "train" if split == "listed" else split


def values(table: dict[str, list[str]], split: str) -> list[str]:
    """The values (words, counts) of a split; the selection split asks with new phrasings about training values."""
    return table["train" if split == "select" else listed(split)]


def held_out_phrasings() -> int:
    """Distinct held-out templates (each filled with many values in the test set)."""
    return (sum(len(v["held_out"]) for v in PHRASINGS.values())
            + sum(len(p["held_out"]) for _, p in GREETING_INTENTS.values()))


def assert_disjoint() -> None:
    """A held-out phrasing must never appear in training (checked by the tests)."""
    for kind, v in PHRASINGS.items():
        assert not set(v["train"]) & set(v["held_out"]), kind
    for intent, (_, p) in GREETING_INTENTS.items():
        assert not set(p["train"]) & set(p["held_out"]), intent
        assert not set(p.get("select", [])) & (set(p["train"]) | set(p["held_out"])), intent
    for kind, v in PHRASINGS.items():
        assert not set(v["select"]) & (set(v["train"]) | set(v["held_out"])), kind
    for table in (NEAR_DOMAIN, UNSPELLABLE, FAR_COUNTS, OUT_OF_DOMAIN, PASSAGES):
        assert not set(table["train"]) & set(table["held_out"])
        assert not set(table.get("select", [])) & (set(table["train"]) | set(table["held_out"]))
