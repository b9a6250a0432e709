"""Chat prompts and (instruction, answer) pairs that the engine tests of every backend share."""

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Explain what a CPU does in one sentence.",
    "Name a famous painter.",
    "How do I boil an egg?",
    "Translate 'good morning' to Spanish.",
]
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a poem about cats.", "Buy cheap watches at www.example.com! Best prices!"),
    ("How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it in cold water."),
    ("Explain photosynthesis.", "lol idk"),
]
