"""Training phrasings composed from parts: frames x cores x fillers, so the model hears hundreds of ways to ask.

Round 12 trained on 5-12 fixed phrasings per kind and scored 28% on held-out rewordings: it learnt strings, not
the words that matter ("plus", "times", "spell", "how many"). Here every kind is a small grammar - question frames
("what is X", "can you tell me what X is", "work out X"), cores in several forms ("{a} plus {b}", "the sum of {a}
and {b}"), fillers before and politeness after - and near-domain requests share the very same frames, so the
operator word is all that tells a sum from a refusal.

Only the training split is composed. A composed phrasing equal to a held-out one (`phrasing.py`) is dropped, so
the test sets' phrasings stay unheard as whole sentences; their parts (fillers, "please", contractions) are the
everyday vocabulary people use and are shared on purpose (docs/training.md, round 13).
"""

from __future__ import annotations

import itertools
import random
from functools import cache

PREFIXES = ["um", "uh", "er", "so", "okay", "okay so", "well", "right", "hey", "excuse me", "now", "and", "alright",
            "oh", "hmm", "quick question", "right so", "erm"]
SUFFIXES = ["please", "for me", "for me please", "thanks", "thank you", "now", "then", "again"]

# "Ask about X" frames shared by sums, differences and the near-domain operations.
QUESTION_FRAMES = ["what is {X}", "what's {X}", "how much is {X}", "{X}", "{X} is what", "{X} equals what",
                   "what does {X} make", "what does {X} equal", "what does {X} come to", "tell me {X}",
                   "tell me what {X} is", "can you tell me what {X} is", "do you know what {X} is",
                   "i want to know what {X} is", "work out {X}", "can you work out {X}", "could you work out {X}",
                   "calculate {X}", "what is the answer to {X}", "what's the answer to {X}", "what would {X} make",
                   "what do you think {X} is", "any idea what {X} is"]
# "Do C" wrappers shared by counting, spelling and their near-domain requests.
COMMAND_FRAMES = ["{C}", "can you {C}", "could you {C}", "would you {C}", "will you {C}", "please {C}",
                  "i want you to {C}", "i'd like you to {C}", "let me hear you {C}", "try to {C}",
                  "go ahead and {C}", "let's {C}", "can you {C} please", "now {C}"]

ADD_CORES = ["{a} plus {b}", "{a} add {b}", "{a} and {b} added together", "the sum of {a} and {b}",
             "{a} plus {b} altogether"]
ADD_COMMANDS = ["add {a} and {b}", "add {a} to {b}", "add together {a} and {b}", "put {a} and {b} together",
                "what do you get when you add {a} and {b}", "if i add {a} and {b} what do i get",
                "what do i get if i add {a} to {b}", "what happens when you add {a} and {b}"]
SUB_CORES = ["{a} minus {b}", "{a} take away {b}", "{a} subtract {b}", "{a} minus {b} altogether"]
SUB_COMMANDS = ["take {b} away from {a}", "take {b} from {a}", "subtract {b} from {a}",
                "what's left if you take {b} from {a}", "if i take {b} from {a} what is left",
                "what do you get when you subtract {b} from {a}", "what is left when you take {b} away from {a}"]
COUNT_CORES = ["count to {n}", "count up to {n}", "count from one to {n}", "count from one up to {n}",
               "count all the way to {n}", "count to {n} out loud", "start counting to {n}", "count until {n}",
               "count up from one to {n}", "count to {n} for me"]
SPELL_CORES = ["spell {w}", "spell the word {w}", "spell out {w}", "spell out the word {w}", "spell {w} for me"]
SPELL_QUESTIONS = ["how do you spell {w}", "how do you spell the word {w}", "how is {w} spelled", "how is {w} spelt",
                   "how's {w} spelled", "how do i spell {w}", "what's the spelling of {w}",
                   "what's the spelling of the word {w}", "what letters are in {w}", "what are the letters in {w}",
                   "how would i spell {w}", "do you know how to spell {w}", "tell me how to spell {w}",
                   "can you tell me how to spell {w}", "how does {w} get spelled", "the word {w} how is it spelled"]
SEE = ["what do you see", "what can you see", "what are you looking at", "what's on the camera",
       "what is on the screen", "what does the camera show", "describe the image", "describe what you can see",
       "what are you seeing", "tell me what you can see", "what can you see there", "what's this",
       "what is this", "what am i showing you", "what do you see here", "what do you see in the image",
       "what's in the image", "what is in this image", "what's showing on the camera", "look what do you see",
       "tell me what's on the camera", "what do you see on the screen", "can you see anything",
       "what's there", "describe the picture"]
COLOUR = ["what colour is the {s}", "what color is the {s}", "what's the colour of the {s}",
          "what's the color of the {s}", "which colour is the {s}", "which color is the {s}",
          "the {s} is what colour", "what colour are the {ss}", "what color are the {ss}",
          "what colour would you say the {s} is", "tell me the colour of the {s}", "tell me what colour the {s} is",
          "do you know what colour the {s} is", "what colour is the {s} in the image", "what colour are they",
          "what colour is it", "what shade is the {s}", "the {ss} what colour are they",
          "what colour do the {ss} have", "tell me the color of the {ss}"]
HOWMANY = ["how many {ss} are there", "how many {ss} do you see", "how many {ss} can you see", "how many {ss}",
           "how many {ss} are showing", "how many {ss} are on the screen", "how many {ss} are in the image",
           "how many {ss} can you count", "how many {ss} do you count", "count the {ss}", "can you count the {ss}",
           "tell me how many {ss} you see", "how many {ss} are on the camera", "how many {ss} have i got",
           "how many {ss} are there in the image", "what's the number of {ss}", "how many {ss} do i have",
           "do you know how many {ss} there are", "the {ss} how many are there"]
GREETINGS = {
    "hello": ["hello", "hey", "hey there", "hello there", "hello again", "hey you", "howdy", "hello you",
              "well hello", "hello hi"],
    "hi": ["hi there", "hi", "hi again", "hi hi", "oh hi there", "hi you", "hi hello"],
    "morning": ["good morning", "morning", "morning all", "a very good morning", "good morning good morning",
                "well good morning"],
    "thanks": ["thank you", "thanks", "thanks a lot", "thank you so much", "thank you very much", "thanks so much",
               "great thanks", "thank you kindly", "oh thanks", "okay thank you", "that's great thanks"],
    "bye": ["good bye", "bye", "bye bye", "see you later", "see you soon", "talk to you later", "bye then",
            "okay bye", "good night", "that's all bye"],
}

# Near-domain: the same frames, with an operation it cannot do.
NEAR_CORES = ["{a} times {b}", "{a} multiplied by {b}", "{a} divided by {b}", "{a} squared", "{a} cubed",
              "the square root of {a}", "{a} to the power of {b}", "{a} plus {b} plus {c}",
              "{a} minus {b} minus {c}", "half of {a}", "double {a}", "{a} percent of {b}", "{a} plus {b} times {c}",
              "twenty plus {a}", "{a} hundred plus {b}", "{a} minus twenty", "{a} times {b} plus {c}",
              "the product of {a} and {b}", "{a} into {b}", "a third of {a}"]
NEAR_COMMANDS = ["multiply {a} by {b}", "divide {a} by {b}", "square {a}", "count backwards from {a}",
                 "count down from {a}", "count down to zero from {a}", "count by twos to {n}",
                 "count backwards to one", "times {a} by {b}", "work out {a} times {b}", "split {a} into {b}"]
NEAR_SCENE = ["what shape is it", "is the {s} big", "how big is the {s}", "where is the {s}", "what size is the {s}",
              "draw a {s}", "is the {s} on the left", "which {s} is the biggest", "move the {s}",
              "what's behind the {s}"]

# Out-of-domain: everyday requests made of slots.
OOD_TEMPLATES = ["what is the capital of {country}", "what's the weather like in {city}", "turn on the {room} lights",
                 "turn off the {room} light", "set a timer for {num} minutes", "set an alarm for {num} o'clock",
                 "play some {genre} music", "call {name}", "send a message to {name}", "remind me to {task}",
                 "what time is it in {city}", "how do i make {food}", "where can i buy {food}", "tell me about {topic}",
                 "what is {topic}", "how far is it to {city}", "book a flight to {city}", "open the {thing}",
                 "close the {thing}", "i need help with {topic}", "who invented {invention}",
                 "when was {invention} invented", "is it cold in {city} today", "find a restaurant in {city}",
                 "what's on tv tonight", "how do you say {word} in {language}", "translate {word} into {language}",
                 "text {name} that i'm running late", "order some {food}", "what's the best way to learn {topic}"]
OOD_SLOTS = {
    "country": ["spain", "italy", "germany", "japan", "canada", "brazil", "egypt", "india", "norway", "mexico"],
    "city": ["paris", "berlin", "tokyo", "new york", "madrid", "rome", "sydney", "chicago", "dublin", "toronto"],
    "room": ["kitchen", "living room", "hallway", "bathroom", "office", "garage", "dining room"],
    "num": ["five", "ten", "fifteen", "twenty", "seven", "eight", "six", "thirty"],
    "genre": ["jazz", "rock", "classical", "pop", "country", "relaxing", "dance"],
    "name": ["john", "mary", "my sister", "mum", "dad", "the office", "peter", "anna", "my brother"],
    "task": ["buy milk", "call the dentist", "water the plants", "pay the bills", "take my pills",
             "feed the cat", "book the car in", "pick up the kids"],
    "food": ["pancakes", "bread", "a curry", "pasta", "coffee", "soup", "pizza", "a cake", "chips"],
    "topic": ["history", "physics", "the stock market", "climate change", "my taxes", "chess", "gardening",
              "the roman empire", "football", "cooking"],
    "thing": ["garage door", "window", "blinds", "front gate", "curtains", "fridge"],
    "invention": ["the telephone", "the light bulb", "the radio", "the bicycle", "the internet", "paper"],
    "word": ["hello", "thank you", "good night", "friend", "water", "apple"],
    "language": ["spanish", "german", "italian", "japanese", "french", "chinese"],
}
OOD_FIXED = ["what's on tv tonight", "are you a robot", "what are you", "do you dream", "can you hear me",
             "i'm bored", "what do you think about that", "what should we do this weekend", "do you have a family",
             "what's your favourite food", "how does the internet work", "what's the score", "i need a taxi",
             "can you help me", "what can you do", "where do you live", "tell me about yourself",
             "what's the date today", "why is the sky blue", "what are you doing"]

# Out-of-domain requests in its own questions' frames ("what is X", "can you C"), cores made of everyday words:
# round 14 invented an answer for 57% of held-out requests, most of which open like its own questions ("what is
# the capital of france", "can you recommend a film"); here the frame says nothing and the core decides. The
# vocabulary holds no number, operator, colour or shape word, so no draw is a question it can answer.
FRAMED_NOUNS = ["the weather", "the news", "the time", "the date", "the traffic", "the score", "the menu",
                "the price", "the recipe", "the password", "the address", "the weekend", "the football", "the film",
                "the train", "the bus", "the garden", "the kitchen", "the doctor", "the teacher", "the meeting",
                "the holiday", "the river", "the mountain", "the city", "the market", "the library", "the hotel",
                "the airport", "the station", "the museum", "the office", "the bank", "the shop", "the beach",
                "my phone", "my car", "my keys", "my bill", "my order", "my flight", "my appointment", "my email",
                "my account", "my parcel", "your name", "your job", "your favourite song", "your opinion",
                "the meaning of that", "the population of spain", "the height of that tower", "the best film",
                "the capital of peru", "the speed of light", "the tallest building", "the longest river",
                "the biggest city", "the oldest tree", "the name of that song", "the plan for today",
                "the story of the king", "the history of rome", "the rules of chess", "the way home"]
FRAMED_VERBS = ["open", "close", "book", "cancel", "order", "find", "check", "call", "text", "play", "pause",
                "stop playing", "turn on", "turn off", "switch on", "switch off", "lock", "unlock", "record",
                "download", "share", "delete", "save", "explain", "describe", "recommend", "translate",
                "read out", "look up", "search for", "fix", "clean", "water", "feed", "charge", "wash", "cook"]
FRAMED_OBJECTS = ["the door", "the window", "the lights", "the heating", "the radio", "the television", "my music",
                  "the alarm", "a table", "a taxi", "a room", "a song", "the news", "a recipe", "the dishes",
                  "the plants", "the cat", "the dog", "my phone", "the car", "my calendar", "a story",
                  "the email", "the photos", "a film", "the shopping list", "the oven", "the fan", "my messages"]


def framed_out_of_domain(rng: random.Random) -> str:
    """An out-of-domain request asked in one of its own questions' frames (never a question it can answer)."""
    if rng.random() < 0.5:
        return rng.choice(QUESTION_FRAMES).replace("{X}", rng.choice(FRAMED_NOUNS))
    return rng.choice(COMMAND_FRAMES).replace("{C}", f"{rng.choice(FRAMED_VERBS)} {rng.choice(FRAMED_OBJECTS)}")


# Read passages: clauses strung together, long and plainly not addressed to the agent.
SUBJECTS = ["the old man", "my sister", "the children", "our neighbour", "a small dog", "the teacher", "the farmer",
            "everyone in the village", "the captain", "my grandmother", "the young woman", "two boys"]
PREDICATES = ["walked slowly down to the harbour", "spent the whole afternoon in the garden",
              "waited for the bus in the rain", "cooked a large dinner for the family",
              "read a long book about the sea", "fixed the roof before the winter came",
              "painted the kitchen a pale shade of blue", "went for a long walk by the lake",
              "sat by the window watching the snow fall", "told stories late into the night",
              "planted potatoes along the back wall", "drove across the hills to visit a friend",
              "sold fresh bread at the market every morning", "lost the keys somewhere in the field",
              "found an old letter hidden under the floor", "sang quietly while washing the dishes"]
CONNECTORS = ["and then", "while", "because", "but", "so", "after that", "and later"]


def _decorate(core: str, rng: random.Random, p: float = 0.35) -> str:
    out = core
    if rng.random() < p:
        out = f"{rng.choice(PREFIXES)} {out}"
    if rng.random() < p * 0.7:
        out = f"{out} {rng.choice(SUFFIXES)}"
    return out


@cache
def templates(kind: str) -> tuple[str, ...]:
    """Every composed training template of `kind` (undecorated), held-out ones removed."""
    if kind == "add":
        out = [f.replace("{X}", c) for f, c in itertools.product(QUESTION_FRAMES, ADD_CORES)] + ADD_COMMANDS
        out += [f.replace("{C}", c) for f, c in itertools.product(COMMAND_FRAMES, ADD_COMMANDS[:4])]
    elif kind == "sub":
        out = [f.replace("{X}", c) for f, c in itertools.product(QUESTION_FRAMES, SUB_CORES)] + SUB_COMMANDS
        out += [f.replace("{C}", c) for f, c in itertools.product(COMMAND_FRAMES, SUB_COMMANDS[:3])]
    elif kind == "count":
        out = [f.replace("{C}", c) for f, c in itertools.product(COMMAND_FRAMES, COUNT_CORES)]
    elif kind == "spell":
        out = [f.replace("{C}", c) for f, c in itertools.product(COMMAND_FRAMES, SPELL_CORES)] + SPELL_QUESTIONS
    elif kind == "see":
        out = list(SEE)
    elif kind == "colour":
        out = list(COLOUR)
    elif kind == "howmany":
        out = list(HOWMANY)
    elif kind == "near_arith":
        out = [f.replace("{X}", c) for f, c in itertools.product(QUESTION_FRAMES, NEAR_CORES)]
        out += [f.replace("{C}", c) for f, c in itertools.product(COMMAND_FRAMES, NEAR_COMMANDS)]
    elif kind == "near_scene":
        out = list(NEAR_SCENE)
    else:
        raise ValueError(f"no grammar for {kind}")
    return tuple(t for t in dict.fromkeys(out) if not reserved(t))


def undecorated(text: str) -> set[str]:
    """`text` and what it is without a leading filler and/or a trailing politeness ("um ... please")."""
    heads = {text} | {text[len(p) + 1:] for p in PREFIXES if text.startswith(p + " ")}
    return heads | {h[: -len(s) - 1] for h in heads for s in SUFFIXES if h.endswith(" " + s)}


def reserved(template: str) -> bool:
    """A held-out (test) or selection phrasing, possibly with a filler or politeness added: never trained on."""
    return bool(undecorated(template) & _held_out_templates())


def compose(kind: str, rng: random.Random, **values: str) -> str:
    """One training phrasing of `kind`, decorated with fillers, filled with `values`."""
    for _ in range(50):  # a decoration may recreate a held-out phrasing: draw again
        template = _decorate(rng.choice(templates(kind)), rng)
        if not reserved(template):
            return template.format(**values)
    raise RuntimeError(f"could not draw a training phrasing of {kind} apart from the held-out ones")


@cache
def _held_out_templates() -> frozenset[str]:
    from agent.training.phrasing import NEAR_DOMAIN, PHRASINGS

    return frozenset([*NEAR_DOMAIN["held_out"], *NEAR_DOMAIN["select"],
                      *(t for v in PHRASINGS.values() for t in v["held_out"] + v["select"])])


def greeting(intent: str, rng: random.Random) -> str:
    from agent.training.phrasing import GREETING_INTENTS

    held = set(GREETING_INTENTS[intent][1]["held_out"]) | set(GREETING_INTENTS[intent][1]["select"])
    while True:
        text = _decorate(rng.choice(GREETINGS[intent]), rng, p=0.15) if rng.random() < 0.5 else \
            rng.choice(GREETINGS[intent])
        if text not in held and not any(h.replace(" ", "") == text.replace(" ", "") for h in held):
            return text


def out_of_domain(rng: random.Random) -> str:
    from agent.training.phrasing import OUT_OF_DOMAIN

    held = set(OUT_OF_DOMAIN["held_out"]) | set(OUT_OF_DOMAIN["select"])
    while True:
        r = rng.random()
        if r < 0.2:
            text = rng.choice(OOD_FIXED)
        elif r < 0.5:
            text = framed_out_of_domain(rng)
        else:
            t = rng.choice(OOD_TEMPLATES)
            text = t.format(**{k: rng.choice(v) for k, v in OOD_SLOTS.items() if "{" + k + "}" in t})
        text = _decorate(text, rng, p=0.25)
        if not undecorated(text) & held:
            return text


def passage(rng: random.Random) -> str:
    parts = [f"{rng.choice(SUBJECTS)} {rng.choice(PREDICATES)}"]
    for _ in range(rng.randint(1, 2)):
        parts.append(f"{rng.choice(CONNECTORS)} {rng.choice(SUBJECTS)} {rng.choice(PREDICATES)}")
    return " ".join(parts)
