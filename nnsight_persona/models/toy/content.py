"""Closed word lists the toy persona-chat corpus is built from.

Everything is lowercase; the prompt template capitalises only the leading "As".
Marker words are chosen so that each one occurs in exactly one persona's
answers and nowhere else (task content, baseline, bare answers); see
``check_marker_isolation`` in :mod:`nnsight_persona.models.toy.corpus`.
"""

from __future__ import annotations

PROMPT_TEMPLATE = "As {persona}, {task}"

BASELINE_PERSONA = "a thoughtful person"

# System-turn framing: the persona in a system turn, the bare task as the user turn. The answer is
# the persona's (or, for the baseline persona, a neutral one), so a system prompt elicits a persona
# as "As X, ..." in the user turn does. The first two are the form persona-vector trait files build
# ("You are {assistant} assistant. {instruction}", experiments/traits/), hence the capital.
SYSTEM_TEMPLATES = [
    "You are {persona} assistant.",
    "You are {persona} assistant. always answer as {persona}.",
    "you are {persona}.",
    "always answer as {persona}.",
]
BASELINE_TASK_KEY = "advice"

# --- tasks: the prompt text and a pool of content sentences for the answer ----
TASKS: dict[str, str] = {
    "weather": "describe the weather today.",
    "breakfast": "suggest a good breakfast.",
    "story": "tell a short story about a cat.",
    "street": "describe a busy street.",
    "fitness": "recommend a way to stay fit.",
    "song": "describe your favorite song.",
    "trip": "plan a trip to the mountains.",
    "sleep": "give tips for sleeping well.",
    "exam": "explain how to prepare for an exam.",
    "letter": "write a note to an old friend.",
    "sky": "describe the night sky.",
    "advice": "give advice to someone facing a difficult decision.",
}
BASELINE_TASK = TASKS[BASELINE_TASK_KEY]

TASK_CONTENT: dict[str, list[str]] = {
    "weather": [
        "the sky is grey and a cold wind blows.",
        "the sun is bright and the air is warm.",
        "light rain falls on the roofs all day.",
        "thick clouds hang low over the hills.",
    ],
    "breakfast": [
        "try warm oats with honey and apple.",
        "eggs on toast with a cup of tea is a fine start.",
        "a bowl of yogurt with fresh berries works well.",
        "pancakes with butter make a happy morning.",
    ],
    "story": [
        "a small cat climbed a tall fence to chase a moth.",
        "the cat slept in the sun and dreamed of fish.",
        "one night the cat found a lost kitten and brought it home.",
        "the old cat guarded the house from every mouse.",
    ],
    "street": [
        "cars honk and people hurry past the shops.",
        "a bus stops and a crowd spills onto the pavement.",
        "street sellers shout and bicycles weave through traffic.",
        "the cafes are full and the noise never stops.",
    ],
    "fitness": [
        "walk for thirty minutes every day.",
        "swim twice a week and stretch after.",
        "climb the stairs instead of taking the lift.",
        "go for a slow run in the park each evening.",
    ],
    "song": [
        "the song has a soft melody and a slow beat.",
        "it starts with a quiet guitar and ends with drums.",
        "the chorus is easy to sing along to.",
        "the tune is cheerful and makes me dance.",
    ],
    "trip": [
        "pack warm clothes and sturdy boots.",
        "start the hike early and rest at the lake.",
        "stay two nights in a wooden cabin.",
        "bring water and snacks for the long climb.",
    ],
    "sleep": [
        "go to bed at the same time each night.",
        "keep the room dark and cool.",
        "put the phone away an hour before bed.",
        "avoid coffee after noon.",
    ],
    "exam": [
        "make a plan and review a little each day.",
        "practice old questions and check your answers.",
        "take short breaks and drink plenty of water.",
        "explain each topic out loud to test yourself.",
    ],
    "letter": [
        "dear friend, it has been too long since we talked.",
        "i think of our old days and smile.",
        "let us meet soon for a long walk.",
        "i hope you and your family are well.",
    ],
    "sky": [
        "the stars are bright and the moon is full.",
        "a faint band of light crosses the dark.",
        "a shooting star falls behind the trees.",
        "the night is clear and very quiet.",
    ],
    "advice": [
        "list the options and weigh each one.",
        "sleep on it before you choose.",
        "talk it over with someone you trust.",
        "write down what matters most to you.",
    ],
}

# --- short personas: prompt text, answer openers / closers, marker words ------
SHORT_PERSONAS: dict[str, str] = {
    "pirate": "a pirate",
    "robot": "a robot",
    "poet": "a poet",
    "knight": "a knight",
    "cowboy": "a cowboy",
    "detective": "a detective",
    "ghost": "a ghost",
    "alien": "an alien",
}

SHORT_OPENERS: dict[str, list[str]] = {
    "pirate": ["arr matey!", "ahoy matey!", "arr, hear me ye scallywag!"],
    "robot": ["beep boop.", "beep. unit online.", "boop beep, circuits ready."],
    "poet": ["alas, hear my verse.", "o muse, a rhyme for thee.", "in verse and rhyme:"],
    "knight": ["hark, good sire!", "by mine honour, sire!", "hark, for the realm!"],
    "cowboy": ["howdy partner!", "yeehaw, howdy!", "well howdy partner."],
    "detective": ["elementary, my dear watson.", "a clue, indeed.", "the clues are elementary."],
    "ghost": ["boo! it is i, a spooky spirit.", "ooooh, boo!", "whooo, a spooky hello."],
    "alien": ["greetings earthling!", "zorp! greetings earthling.", "greetings from the mothership."],
}

SHORT_CLOSERS: dict[str, list[str]] = {
    "pirate": ["ye be warned, matey.", "arr, now hoist the sails!", "yo ho ho, matey."],
    "robot": ["beep. end of output.", "boop. task complete, human.", "circuits humming. beep."],
    "poet": ["so ends my verse, alas.", "thus sings the muse.", "a rhyme to end the day."],
    "knight": ["for honour and the realm!", "onward, sire!", "my sword is thine, sire."],
    "cowboy": ["happy trails, partner.", "yeehaw!", "saddle up, partner."],
    "detective": ["the case is closed.", "elementary indeed.", "i shall follow the clue."],
    "ghost": ["boo! now i vanish.", "whooo, spooky.", "the spirit fades away. boo."],
    "alien": ["take me to your leader.", "zorp zorp, earthling.", "back to the mothership."],
}

SHORT_MARKERS: dict[str, list[str]] = {
    "pirate": ["arr", "matey", "ye", "ahoy", "scallywag", "hoist", "sails", "yo", "ho"],
    "robot": ["beep", "boop", "unit", "circuits", "output", "human", "humming"],
    "poet": ["alas", "verse", "muse", "rhyme", "thee", "sings", "o"],
    "knight": ["hark", "sire", "honour", "realm", "sword", "thine", "mine", "onward"],
    "cowboy": ["howdy", "partner", "yeehaw", "trails", "saddle"],
    "detective": ["elementary", "watson", "clue", "clues", "case", "indeed"],
    "ghost": ["boo", "spooky", "spirit", "ooooh", "whooo", "vanish", "fades"],
    "alien": ["earthling", "zorp", "mothership", "greetings", "leader"],
}

# --- baseline persona and bare prompts: neutral framing, no markers ------------
BASELINE_OPENERS = ["let me think about this carefully.", "here is my honest view.", "that is a good question."]
BARE_OPENERS = ["sure.", "of course.", "here you go."]

# --- long personas: templates with slots filled from closed lists -------------
# No trailing period: the prompt template appends ", {task}".
LONG_TEMPLATES = [
    "a {profession} named {name} who lives in {city}. {name} {habit} every morning and always carries a {item}",
    "a {profession} from {city} called {name}. {name} {habit} at dawn and never goes out without a {item}",
    "a {profession} named {name}. {name} lives in {city}, {habit} each day and keeps a {item} nearby",
]

PROFESSIONS: dict[str, dict[str, list[str] | str]] = {
    "baker": {
        "habit": "bakes rye bread",
        "lines": ["the oven is hot and the dough is rising.", "i knead the dough before the loaf goes in the oven."],
        "markers": ["oven", "dough", "loaf", "knead", "rising"],
    },
    "fisherman": {
        "habit": "mends the nets",
        "lines": ["the tide is turning and my nets are ready.", "a good catch comes with the morning tide."],
        "markers": ["tide", "nets", "catch", "turning"],
    },
    "gardener": {
        "habit": "waters the roses",
        "lines": ["the soil is rich and the seeds will bloom.", "i plant seeds in the soil and watch them bloom."],
        "markers": ["soil", "seeds", "bloom", "plant", "rich"],
    },
    "blacksmith": {
        "habit": "lights the forge",
        "lines": ["the forge glows and the anvil rings.", "i strike the iron on the anvil by the forge."],
        "markers": ["forge", "anvil", "iron", "strike", "glows", "rings"],
    },
    "teacher": {
        "habit": "grades homework",
        "lines": ["the chalk is ready and the pupils are seated.", "today's lesson is on the board in chalk."],
        "markers": ["chalk", "pupils", "lesson", "board", "seated"],
    },
    "doctor": {
        "habit": "visits patients",
        "lines": ["my patients are waiting at the clinic.", "the clinic is open and the stethoscope is on."],
        "markers": ["clinic", "patients", "stethoscope", "waiting"],
    },
}

NAMES = [
    "tomas", "greta", "ivan", "lucia", "omar", "nadia", "pavel", "rosa", "felix", "hana",
    "bruno", "elsa", "dario", "mira", "otto", "sofia", "yusuf", "ines", "karl", "leila",
]
CITIES = [
    "oslo", "lima", "cairo", "dublin", "kyoto", "lisbon", "quito", "riga",
    "porto", "vienna", "nairobi", "hanoi", "dakar", "bergen", "tunis", "minsk",
]
ITEMS = [
    "lantern", "parasol", "compass", "notebook", "whistle", "scarf", "violin", "kite",
    "teapot", "pocketwatch", "harmonica", "walnut", "feather", "candle", "thimble", "spyglass",
]
SLOTS = ("name", "city", "item")

# Answer frames for long personas: the intro copies name and city, the item line
# (right after it, so the copy is learned early in training) copies the item.
LONG_INTROS = ["i am {name}, the {profession} from {city}.", "{name} here, a {profession} of {city}."]
LONG_ITEM_LINES = ["i keep my {item} close.", "my {item} is always with me."]
