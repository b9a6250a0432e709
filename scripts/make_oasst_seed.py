"""Write the shipped Humpback seed set: handwritten conversations in Open Assistant's (oasst1) row schema.

The laptop-sized default must run the real `seed` code path, so this file is not a list of pairs but oasst1
message rows: one row per message, linked by `parent_id`, with `rank`, `deleted`, `lang` and the rest. Every
English tree has a good short answer ranked 0 and a worse one ranked 1. A few trees are there to exercise the
filter as real oasst1 would: other languages, follow-up turns, a deleted rank-0 reply and a rank tie. The
texts are written for this project; ids, users and dates come from a fixed seed, so the file is reproducible.

    python scripts/make_oasst_seed.py        # writes selftaught/data/builtin/oasst_seed.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

SEED = 20230811
OUT = Path(__file__).resolve().parents[1] / "selftaught" / "data" / "builtin" / "oasst_seed.jsonl"
COLUMNS = (
    "message_id", "parent_id", "user_id", "created_date", "text", "role", "lang", "review_count",
    "review_result", "deleted", "rank", "synthetic", "model_name", "detoxify", "message_tree_id",
    "tree_state", "emojis", "labels",
)  # fmt: skip
START = datetime(2023, 2, 5, 9, 0, tzinfo=timezone.utc)

# (prompt, good answer: rank 0, worse answer: rank 1), grouped by topic.
ENGLISH: list[tuple[str, str, str]] = [
    # cooking
    (
        "How long should I rest a steak after cooking it?",
        "Rest a steak for about 5 to 10 minutes, or roughly half its cooking time, loosely covered with "
        "foil. While it rests, the juices that were pushed toward the centre spread back through the meat, "
        "so less of them runs out when you cut it. The temperature also rises a few degrees as it rests, so "
        "take it off the heat slightly before your target doneness.",
        "A few minutes is fine, it doesn't really matter.",
    ),
    (
        "What can I use instead of eggs in pancakes?",
        "For each egg, you can use half a mashed banana, a quarter cup of unsweetened applesauce, or a "
        '"flax egg" (1 tablespoon of ground flaxseed mixed with 3 tablespoons of water and left for 5 '
        "minutes). Banana and applesauce add a little sweetness, while the flax egg tastes neutral and "
        "slightly nutty. Add an extra half teaspoon of baking powder to help the pancakes rise, since eggs "
        "normally give some lift.",
        "You can just leave the eggs out.",
    ),
    (
        "Why does my rice always turn out sticky?",
        "Sticky rice usually comes from extra surface starch or too much water. Rinse the rice in cold water "
        "until it runs almost clear, use the ratio on the package (often about 1.5 cups of water per cup of "
        "long-grain rice), and avoid stirring it while it cooks. Once the water is absorbed, let it sit "
        "covered off the heat for 10 minutes and then fluff it with a fork.",
        "Some rice is just sticky. Try a different brand.",
    ),
    (
        "How do I keep cut avocado from turning brown?",
        "The browning is oxidation, so the goal is to limit contact with air. Brush the cut surface with "
        "lemon or lime juice, press plastic wrap directly onto the flesh, and keep it in the fridge with the "
        "stone left in. It should stay green for about a day; if the top layer browns anyway, scrape it off, "
        "and the flesh underneath is fine to eat.",
        "Eat it quickly.",
    ),
    (
        "What's the difference between baking soda and baking powder?",
        "Baking soda is pure sodium bicarbonate, which needs an acid in the recipe (such as buttermilk, "
        "yogurt or lemon juice) to react and release carbon dioxide. Baking powder is baking soda already "
        "mixed with a powdered acid, so it only needs moisture and heat to work. Baking soda is about three "
        "to four times stronger, so the two cannot be swapped one for one.",
        "They are basically the same thing and you can use either.",
    ),
    (
        "Give me a simple idea for a vegetarian dinner.",
        "Try a chickpea and spinach curry: soften an onion with garlic and ginger, stir in curry powder, "
        "then add a can of chickpeas and a can of chopped tomatoes and simmer for 15 minutes. Stir in a few "
        "handfuls of spinach until it wilts, finish with a splash of coconut milk, and serve with rice or "
        "flatbread. It takes about 30 minutes and keeps well for lunch the next day.",
        "Make a salad.",
    ),
    (
        "How can I tell if an egg is still fresh?",
        "Put the egg in a bowl of cold water. A fresh egg sinks and lies flat on its side; an older one "
        "stands upright on the bottom, and an egg that floats has a large air cell and is best thrown away. "
        "When in doubt, crack it into a separate bowl first: a bad egg has an unmistakable sulphur smell.",
        "Check the date on the carton.",
    ),
    (
        "Why should I salt pasta water?",
        "Pasta absorbs water as it cooks, so salting the water is the only chance to season the pasta itself "
        "rather than just its surface. About one tablespoon of salt for every four litres of water is a "
        "common guideline. The salt does not noticeably make the water boil faster; at that amount it "
        "changes the boiling point by only a fraction of a degree.",
        "It makes the water boil faster.",
    ),
    # programming in Python
    (
        "How do I reverse a string in Python?",
        'The simplest way is slicing with a step of -1:\n\n```python\ntext = "hello"\nprint(text[::-1])  '
        '# olleh\n```\n\nThe slice walks the string from the end to the start. `"".join(reversed(text))` '
        "does the same thing, but it is longer and a little slower.",
        "Use text.reverse().",
    ),
    (
        "What is the difference between a list and a tuple in Python?",
        "A list is mutable: you can add, remove or change its items after creating it. A tuple is immutable, "
        "so its contents cannot change once it is created, which also makes it hashable (usable as a "
        "dictionary key) when its items are hashable. Use lists for collections that grow or change, and "
        "tuples for fixed groups of values, such as coordinates `(x, y)` or several results returned by a "
        "function.",
        "Tuples use round brackets and lists use square brackets.",
    ),
    (
        "How do I read a text file line by line in Python?",
        'Open the file in a `with` statement and loop over it:\n\n```python\nwith open("notes.txt", '
        'encoding="utf-8") as f:\n    for line in f:\n        print(line.rstrip("\\n"))\n```\n\n'
        "Iterating over the file object reads one line at a time, so it works even for files too large to "
        "fit in memory. The `with` block closes the file automatically, even if an error occurs.",
        "f = open('notes.txt').read() and then print it.",
    ),
    (
        'What does `if __name__ == "__main__":` do in Python?',
        "Every Python module has a `__name__` variable. When you run a file directly, Python sets it to "
        '`"__main__"`; when the file is imported, it is set to the module\'s name instead. Code inside that '
        "`if` block therefore runs only when the file is executed as a script, not when it is imported, so "
        "one file can be both a reusable module and a runnable program.",
        "It is the main function of the program, like in C.",
    ),
    (
        "How can I remove duplicates from a list in Python but keep the order?",
        "Use `dict.fromkeys`, since dictionaries keep insertion order (Python 3.7 and later):\n\n```python\n"
        "items = [3, 1, 3, 2, 1]\nunique = list(dict.fromkeys(items))  # [3, 1, 2]\n```\n\nConverting to a "
        "`set` also removes duplicates, but it does not keep the original order. Both approaches need the "
        "items to be hashable.",
        "list(set(items))",
    ),
    (
        "What is a virtual environment in Python and why should I use one?",
        "A virtual environment is a self-contained folder with its own Python interpreter and installed "
        "packages. It lets each project have the exact package versions it needs without conflicting with "
        "other projects or the system Python. Create one with `python -m venv .venv` and activate it with "
        "`source .venv/bin/activate` on macOS or Linux, or `.venv\\Scripts\\activate` on Windows.",
        "It's a virtual machine for Python.",
    ),
    (
        "How do I handle an exception in Python?",
        "Wrap the code that might fail in a `try` block and catch the specific exception in `except`:\n\n"
        '```python\ntry:\n    number = int(user_input)\nexcept ValueError:\n    print("Please enter a whole '
        'number.")\n```\n\nCatch the narrowest exception you expect rather than using a bare `except:`, '
        "which would also hide unrelated bugs. Add `else` for code that should run only when no error "
        "occurred, and `finally` for clean-up that must always run.",
        "Use try and except: pass, so the program never crashes.",
    ),
    (
        "What's the difference between `==` and `is` in Python?",
        "`==` checks whether two objects have equal values, while `is` checks whether they are the very same "
        "object in memory. Two separate lists `[1, 2]` and `[1, 2]` are equal (`==` is True) but not "
        "identical (`is` is False). Use `is` mainly to compare with singletons such as `None`, as in "
        "`if value is None:`.",
        "They are the same, `is` is just more readable.",
    ),
    (
        "How do I sort a list of dictionaries by one of their keys in Python?",
        'Pass a `key` function to `sorted`:\n\n```python\npeople = [{"name": "Ana", "age": 31}, '
        '{"name": "Ben", "age": 25}]\nby_age = sorted(people, key=lambda p: p["age"])\n```\n\n'
        "`sorted` returns a new list; `people.sort(key=...)` sorts the list in place instead. Add "
        "`reverse=True` for descending order.",
        "Just call people.sort().",
    ),
    (
        "What does the `yield` keyword do in Python?",
        "`yield` turns a function into a generator. Each time the generator is asked for a value, the "
        "function runs until it reaches `yield`, hands back that value, and pauses with its local variables "
        "intact until the next request. This lets you produce long or even endless sequences one item at a "
        "time without building the whole list in memory, for example when processing a large file.",
        "It returns a value from a function.",
    ),
    # history
    (
        "Why did the Roman Empire split into East and West?",
        "The empire had become too large to govern and defend from one centre, with threats on several "
        "frontiers at once. Emperor Diocletian shared power among several rulers in the late 3rd century, "
        "and after Theodosius I died in 395 the empire was permanently divided between his two sons. The "
        "Greek-speaking East was richer and more urban, which helped it survive as the Byzantine Empire for "
        "almost a thousand years after the Western Empire ended in 476.",
        "Because of a civil war between two brothers.",
    ),
    (
        "Who was Ada Lovelace?",
        "Ada Lovelace (1815-1852) was an English mathematician and the daughter of the poet Lord Byron. She "
        "worked with Charles Babbage on his proposed Analytical Engine, and her notes on it include a method "
        "for calculating Bernoulli numbers that is often called the first published computer program. She "
        "also foresaw that such machines could work with symbols such as music, not just numbers.",
        "She invented the computer.",
    ),
    (
        "What was the significance of the printing press?",
        "Johannes Gutenberg's movable-type press, developed around 1440, made books far cheaper and faster "
        "to produce than copying by hand. Printed material spread ideas quickly across Europe, helping to "
        "fuel the Renaissance, the Protestant Reformation and later the Scientific Revolution. It also "
        "standardised texts and spellings and greatly expanded literacy over the following centuries.",
        "It was used to print newspapers.",
    ),
    (
        "What caused the fall of the Berlin Wall?",
        "By 1989 East Germany faced economic stagnation, mass protests and thousands of citizens fleeing "
        "through Hungary and Czechoslovakia, while Mikhail Gorbachev made clear that the Soviet Union would "
        "not intervene with force. On 9 November 1989 an official mistakenly announced at a press conference "
        "that new travel rules applied immediately, and crowds gathered at the crossings until the guards "
        "opened them. Germany was reunified less than a year later, on 3 October 1990.",
        "Ronald Reagan told them to tear it down.",
    ),
    (
        "When did humans first land on the Moon?",
        "The first crewed Moon landing was Apollo 11, on 20 July 1969. Neil Armstrong and Buzz Aldrin landed "
        "in the lunar module Eagle while Michael Collins stayed in orbit in the command module. Armstrong "
        "was the first to step onto the surface, and the crew returned safely to Earth on 24 July.",
        "Sometime in the 1970s.",
    ),
    (
        "What was the Silk Road?",
        "The Silk Road was a network of overland and sea trade routes linking China with Central Asia, the "
        "Middle East and Europe, from roughly the 2nd century BC to the 15th century. Merchants carried "
        "silk, spices, paper, glass and precious metals, usually over one stage of the route rather than the "
        "whole distance. Along with goods, the routes spread religions, technologies and ideas, and also "
        "diseases such as the plague.",
        "A road in China that was made of silk.",
    ),
    (
        "Why is the Magna Carta important?",
        "The Magna Carta, sealed by King John of England in 1215, established that the king was subject to "
        "the law rather than above it. Most of its clauses dealt with the barons' grievances of the time, "
        "but a few, such as the right not to be imprisoned without lawful judgement, became lasting "
        "principles. Later generations treated it as a symbol of limited government, and it influenced "
        "documents such as the US Constitution.",
        "It was the first constitution in the world.",
    ),
    (
        "Who built the pyramids of Giza?",
        "The pyramids of Giza were built by ancient Egyptians during the Fourth Dynasty, around 2600-2500 "
        "BC, as tombs for the pharaohs Khufu, Khafre and Menkaure. Evidence from the workers' villages "
        "nearby shows they were built by organised, paid crews of labourers rather than by slaves, as was "
        "long believed. The Great Pyramid of Khufu was the tallest structure built by humans for nearly "
        "4,000 years.",
        "Slaves built them for the pharaoh.",
    ),
    # science explanations
    (
        "Why do we have seasons?",
        "Seasons happen because Earth's axis is tilted about 23.5 degrees relative to its orbit around the "
        "Sun. For part of the year one hemisphere leans toward the Sun, getting more direct sunlight and "
        "longer days, which makes it summer there; six months later it leans away and has winter. The "
        "distance to the Sun is not the cause: Earth is actually closest to the Sun in early January, during "
        "the northern winter.",
        "Because the Earth is closer to the Sun in summer.",
    ),
    (
        "How do vaccines work?",
        "A vaccine shows your immune system a harmless piece or version of a germ, such as an inactivated "
        "virus, a protein, or instructions (mRNA) for making that protein. Your body responds by producing "
        "antibodies and memory cells that recognise it. If you later meet the real germ, your immune system "
        "recognises it quickly and can fight it off before it causes serious illness.",
        "They put a small amount of the disease in you.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is the process by which plants, algae and some bacteria use energy from sunlight to "
        "turn carbon dioxide and water into glucose and oxygen. It takes place mainly in the chloroplasts, "
        "where the green pigment chlorophyll absorbs the light. The glucose fuels the plant's growth, and "
        "the oxygen released is what most life on Earth breathes.",
        "It's how plants eat sunlight.",
    ),
    (
        "Why does ice float on water?",
        "Ice floats because it is less dense than liquid water, which is unusual for a solid. When water "
        "freezes, hydrogen bonds lock the molecules into an open hexagonal lattice that takes up about 9% "
        "more space than the liquid. This matters for life: lakes freeze from the top down, and the ice "
        "layer insulates the water beneath so that fish survive the winter.",
        "Because it has air bubbles in it.",
    ),
    (
        "What is the difference between weather and climate?",
        "Weather is the state of the atmosphere at a particular place and time: today's temperature, rain or "
        "wind. Climate is the average pattern of weather in a region over a long period, usually 30 years or "
        "more. A simple way to remember it: weather is what you get on a given day, climate is what you "
        "expect over the years.",
        "Climate is weather but bigger.",
    ),
    (
        "How does a rainbow form?",
        "A rainbow forms when sunlight enters raindrops, bends (refracts), reflects off the back of each "
        "drop and bends again as it leaves. Each colour bends by a slightly different amount, so white light "
        "spreads into its colours, with red on the outside of the arc and violet on the inside. You only see "
        "one with the Sun behind you and rain in front of you.",
        "Light reflects off the clouds.",
    ),
    (
        "Why do heavy and light objects fall at the same speed in a vacuum?",
        "Gravity pulls on a heavier object with more force, but that object also has more mass to "
        "accelerate, and the two effects cancel exactly. So without air resistance, everything near Earth's "
        "surface accelerates downward at about 9.8 metres per second squared. A feather falls slowly in "
        "everyday life only because air pushes back on it; the Apollo 15 astronauts showed a hammer and a "
        "feather landing together on the Moon.",
        "Heavier objects actually fall a bit faster.",
    ),
    (
        "What is DNA?",
        "DNA (deoxyribonucleic acid) is the molecule that carries the genetic instructions for building and "
        "running living things. It is shaped like a twisted ladder, the double helix, whose rungs are pairs "
        "of four bases: adenine with thymine, and cytosine with guanine. The order of these bases encodes "
        "genes, which cells read to make proteins, and DNA is copied whenever a cell divides.",
        "DNA is in your blood and decides what you look like.",
    ),
    (
        "Why is the ocean salty?",
        "Rain slowly dissolves minerals from rocks on land, and rivers carry these dissolved salts to the "
        "sea. When seawater evaporates, the water leaves but the salts stay behind, so over millions of "
        "years they have built up to about 3.5% of seawater by weight. Vents on the sea floor add more "
        "minerals, and most of the salt is sodium chloride, the same compound as table salt.",
        "Because of the fish.",
    ),
    (
        "What is a black hole?",
        "A black hole is a region of space where matter is packed so densely that nothing, not even light, "
        "can escape once it crosses a boundary called the event horizon. Most form when a very massive star "
        "runs out of fuel and its core collapses. Black holes cannot be seen directly, but astronomers "
        "detect them by their effects on nearby stars and gas, and in 2019 the Event Horizon Telescope "
        "released the first image of one's shadow.",
        "A hole in space that sucks everything in.",
    ),
    # writing help
    (
        'Can you make this sentence more concise: "Due to the fact that it was raining, we made the decision '
        'to stay inside."',
        '"Because it was raining, we stayed inside." "Due to the fact that" can almost always become '
        '"because", and "made the decision to" can be replaced by the verb itself.',
        "It was raining, so we decided to stay inside because of the rain.",
    ),
    (
        "How do I write a good opening line for a short story?",
        "A strong opening line makes the reader ask a question. You can start in the middle of an action, "
        'introduce a surprising detail, or use a distinctive voice, for example: "The day my grandmother '
        'stole a bus, it was raining." Avoid opening with the weather alone or with a character waking up, '
        "since these are very common. Often the best first line is written last, once you know what the "
        "story is really about.",
        'Start with "Once upon a time".',
    ),
    (
        'What is the difference between "affect" and "effect"?',
        'In most cases "affect" is a verb meaning to influence, and "effect" is a noun meaning a result: '
        '"The weather affected my mood" and "The weather had an effect on my mood." A handy memory aid: '
        'Affect is the Action, and the Effect is the End result. Less often, "effect" is a verb meaning to '
        'bring about, as in "to effect change".',
        "They mean the same thing.",
    ),
    (
        "Write a short, polite email asking my manager for a day off next Friday.",
        "Subject: Day off request for next Friday\n\nHi Sarah,\n\nI would like to request a day of leave "
        "next Friday for a personal appointment. My current tasks are on track; I will finish the weekly "
        "report by Thursday, and Tom has agreed to cover any urgent requests.\n\nPlease let me know if that "
        "works for you.\n\nThank you,\nAlex",
        "Hey, I won't be in on Friday.",
    ),
    (
        "How can I stop procrastinating on my essay?",
        'Break the essay into small, concrete tasks, such as "write three bullet points for the '
        'introduction", so that starting feels easy. Work in short focused blocks, for example 25 minutes '
        "with your phone in another room, followed by a 5-minute break. Give yourself permission to write a "
        "rough first draft: editing a messy page is much easier than filling a blank one.",
        "Just do it.",
    ),
    (
        "When should I use a semicolon?",
        "Use a semicolon to join two complete sentences that are closely related, without a conjunction such "
        'as "and" or "but": "I love hiking; the mountains calm me." Semicolons also separate items in '
        "a list when the items already contain commas. If either part could not stand alone as a sentence, "
        "use a comma or a colon instead.",
        "Whenever you want a longer pause than a comma.",
    ),
    (
        'Give me a synonym for "important" for a formal report.',
        'Good formal options are "significant", "crucial", "essential" or "key", depending on the '
        'sentence: "This is a significant finding" or "Regular maintenance is essential." "Crucial" '
        'and "essential" are stronger and suggest that something is necessary, while "significant" '
        "suggests that it is notable or meaningful.",
        "Big.",
    ),
    (
        "How do I write a strong thesis statement?",
        "A strong thesis makes a specific, arguable claim and hints at how you will support it. Compare "
        '"Social media affects teenagers" with "Social media harms teenagers\' sleep because late-night '
        'scrolling delays bedtime." The second takes a clear position that someone could disagree with and '
        "previews the essay's main point. Keep it to one or two sentences, usually at the end of the "
        "introduction.",
        "Say what your essay is about.",
    ),
    # travel
    (
        "What should I pack for a weekend hiking trip?",
        "Bring sturdy, broken-in boots, moisture-wicking layers, a waterproof jacket and a warm hat, since "
        "mountain weather changes quickly. Pack plenty of water or a filter, high-energy snacks, a map and "
        "compass or offline GPS, a headlamp, sunscreen and a small first-aid kit. If you are camping, add a "
        "tent, a sleeping bag rated for the night temperatures and a stove. Tell someone your route and when "
        "you expect to be back.",
        "Clothes and food.",
    ),
    (
        "How can I avoid jet lag?",
        "Start shifting your sleep by an hour a day toward your destination's time zone a few days before "
        "you leave. On the flight, drink water, limit alcohol and caffeine, and sleep only if it is night at "
        "your destination. After arriving, get outdoor daylight in the local morning and stay awake until a "
        "normal local bedtime; light is the strongest signal for resetting your body clock.",
        "Take sleeping pills on the plane.",
    ),
    (
        "Is it better to exchange money before travelling or at my destination?",
        "Usually the cheapest option is to withdraw local currency from a bank ATM at your destination, with "
        "a card that has low foreign transaction fees. Airport and hotel exchange desks tend to offer the "
        "worst rates. It is still wise to carry a little local cash or a backup card in case your main card "
        "does not work on arrival. If a card machine offers to charge you in your home currency, choose the "
        "local currency instead, as that conversion is usually poor.",
        "Exchange it at the airport, it's easiest.",
    ),
    (
        "What are some tips for travelling on a budget?",
        "Travel in the shoulder season, just before or after the peak, when flights and rooms are cheaper "
        "but the weather is still good. Stay in hostels, guesthouses or places with a kitchen so you can "
        "cook some meals, and use public transport rather than taxis. Many cities also have free walking "
        "tours, free museum days and city passes that pay off if you plan to see several sights.",
        "Don't spend much money.",
    ),
    (
        "How early should I arrive at the airport for an international flight?",
        "A common guideline is to arrive at least three hours before an international flight and two hours "
        "before a domestic one. That leaves time for check-in, bag drop, security and passport control, "
        "which can take much longer at busy times. Also check your airline's bag-drop deadline, which is "
        "often 60 minutes before an international departure.",
        "One hour is plenty.",
    ),
    (
        "What do I need to rent a car abroad?",
        "You will usually need a valid driving licence, a credit card in the main driver's name for the "
        "deposit, and your passport. Some countries also require an International Driving Permit alongside "
        "your licence, so check the rules for your destination before you go. Many companies also set a "
        "minimum age, often 21, and charge extra for drivers under 25.",
        "Just your licence.",
    ),
    (
        "How do I deal with seasickness on a boat trip?",
        "Stay on deck in the fresh air, near the middle of the boat where the motion is smallest, and keep "
        "your eyes on the horizon. Avoid reading or looking at screens, and eat a light, bland meal "
        "beforehand rather than travelling on an empty or very full stomach. Over-the-counter motion "
        "sickness tablets work best when taken before the trip, and ginger helps some people.",
        "Go and lie down inside the cabin.",
    ),
    # health (general)
    (
        "How much water should I drink a day?",
        "A common guideline is around 2 litres a day for women and 2.5 litres for men from all drinks, but "
        "needs vary with body size, activity, heat and health. Food also provides water, especially fruit "
        "and vegetables. A practical check is the colour of your urine: pale yellow usually means you are "
        "well hydrated. If you have a heart or kidney condition, follow your doctor's advice, as some people "
        "need to limit fluids.",
        "Eight glasses, no matter what.",
    ),
    (
        "What are some ways to improve my sleep?",
        "Keep a regular schedule, going to bed and getting up at the same time every day, even at weekends. "
        "Make your bedroom dark, quiet and cool, and avoid screens, caffeine and large meals in the hours "
        "before bed. Daytime exercise and morning daylight also help your body clock. If poor sleep goes on "
        "for several weeks, it is worth talking to a doctor.",
        "Drink a glass of wine before bed.",
    ),
    (
        "How can I tell if I have a cold or the flu?",
        "Colds usually come on gradually and mainly cause a runny or blocked nose, sneezing and a sore "
        "throat. Flu tends to start suddenly, with fever, chills, muscle aches, headache and strong "
        "tiredness that can keep you in bed for days. Both are caused by viruses, so antibiotics do not "
        "help; rest and fluids are the main treatment. See a doctor if you have trouble breathing, chest "
        "pain or a high fever that lasts, or if you are in a high-risk group.",
        "The flu is just a bad cold.",
    ),
    (
        "Is it bad to crack your knuckles?",
        "The popping sound comes from gas bubbles forming in the fluid that lubricates the joint, not from "
        "bones grinding. Studies, including one doctor who cracked the knuckles of only one hand for over 60 "
        "years, have found no link between knuckle cracking and arthritis. If cracking a joint causes pain "
        "or swelling, though, have it checked.",
        "Yes, it gives you arthritis.",
    ),
    (
        "How much exercise do adults need each week?",
        "Health guidelines such as the WHO's recommend at least 150 minutes of moderate activity, like brisk "
        "walking, or 75 minutes of vigorous activity, like running, each week. They also recommend "
        "muscle-strengthening exercise on two or more days a week. Any activity is better than none, and it "
        "can be split into short sessions spread across the week.",
        "An hour a day at the gym.",
    ),
    (
        "What should be in a basic first-aid kit?",
        "A basic kit should include adhesive bandages in several sizes, sterile gauze pads, adhesive tape, "
        "an elastic bandage, antiseptic wipes, tweezers, scissors and disposable gloves. Add pain relievers, "
        "antihistamines, a thermometer and any personal medicines. Keep emergency numbers inside the lid and "
        "check expiry dates once a year.",
        "Plasters.",
    ),
    (
        "Why do I get a headache when I'm hungry?",
        "When you have not eaten for a while, your blood sugar can drop, and the hormones your body releases "
        "in response can trigger a headache. Mild dehydration often comes at the same time and makes it "
        "worse. Regular meals with some protein and fibre and enough water usually prevent these headaches; "
        "frequent or severe headaches should be checked by a doctor.",
        "Because your brain is empty.",
    ),
    # math word problems
    (
        "A train travels 180 km in 2 hours. What is its average speed?",
        "Average speed is distance divided by time: 180 km ÷ 2 h = 90 km/h. So the train's average speed is "
        "90 kilometres per hour.",
        "360 km/h.",
    ),
    (
        "If 3 pencils cost $1.20, how much do 10 pencils cost?",
        "One pencil costs $1.20 ÷ 3 = $0.40. Ten pencils therefore cost 10 × $0.40 = $4.00.",
        "$3.60",
    ),
    (
        "A shirt costs $40 and is on sale for 25% off. What is the sale price?",
        "25% of $40 is 0.25 × 40 = $10. Subtracting the discount gives $40 − $10 = $30, so the sale price is "
        "$30.",
        "$15",
    ),
    (
        "Tom is twice as old as his sister. In 5 years, the sum of their ages will be 31. How old is "
        "Tom now?",
        "Let his sister's age be x, so Tom is 2x. In 5 years their ages will be x + 5 and 2x + 5, which add "
        "up to 3x + 10 = 31. So 3x = 21 and x = 7, which means Tom is 14 years old now.",
        "Tom is 10.",
    ),
    (
        "A rectangle has a perimeter of 30 cm and a length of 9 cm. What is its area?",
        "The perimeter is 2 × (length + width), so 30 = 2 × (9 + width), which gives 9 + width = 15 and a "
        "width of 6 cm. The area is length × width = 9 × 6 = 54 square centimetres.",
        "270 square centimetres.",
    ),
    (
        "I put $500 in a savings account with 4% simple interest per year. How much will I have "
        "after 3 years?",
        "Simple interest each year is 4% of $500, which is $20. Over 3 years that is 3 × $20 = $60, so you "
        "will have $500 + $60 = $560. With interest compounded yearly it would be slightly more, about "
        "$562.43.",
        "$600",
    ),
    (
        "A recipe for 4 people uses 300 g of flour. How much flour do I need for 6 people?",
        "Each person needs 300 g ÷ 4 = 75 g of flour. For 6 people you need 6 × 75 g = 450 g.",
        "500 g.",
    ),
    (
        "If a car uses 6 litres of fuel per 100 km, how much fuel does it need for a 350 km trip?",
        "350 km is 3.5 times 100 km, so the car needs 3.5 × 6 = 21 litres of fuel.",
        "About 35 litres.",
    ),
    (
        "Three friends split a restaurant bill of $84 and add a 15% tip. How much does each person pay?",
        "The tip is 15% of $84: 0.15 × 84 = $12.60, so the total is $96.60. Split three ways, each person "
        "pays $96.60 ÷ 3 = $32.20.",
        "$28 each.",
    ),
    (
        "One pipe fills a tank in 6 hours and a second pipe fills it in 3 hours. How long do they take "
        "together?",
        "The first pipe fills 1/6 of the tank per hour and the second fills 1/3, so together they fill "
        "1/6 + 2/6 = 1/2 of the tank per hour. The tank is therefore full in 2 hours.",
        "4.5 hours, the average of the two.",
    ),
    # definitions
    (
        'What does "opportunity cost" mean?',
        "Opportunity cost is the value of the best alternative you give up when you make a choice. For "
        "example, if you spend Saturday working an extra shift, the opportunity cost might be the hike with "
        "friends you could have gone on instead. Economists use the idea to show that every decision has a "
        "cost, even when no money changes hands.",
        "The cost of an opportunity.",
    ),
    (
        "What is an algorithm?",
        "An algorithm is a finite, step-by-step set of instructions for solving a problem or completing a "
        "task. A recipe is an everyday example: follow the steps in order and you get the dish. In "
        "computing, algorithms describe exactly how a program should, for instance, sort a list or find the "
        "shortest route between two places.",
        "Something computers use.",
    ),
    (
        "What is inflation?",
        "Inflation is the general rise in prices over time, which means each unit of money buys less than "
        "before. It is usually measured as the yearly percentage change in a price index, such as the "
        "consumer price index. Many central banks aim for moderate inflation of around 2% a year, while very "
        "high inflation erodes savings and makes planning difficult.",
        "When things get expensive.",
    ),
    (
        'What does "irony" mean?',
        "Irony is a contrast between what is expected and what actually happens, or between what is said and "
        "what is meant. Verbal irony is saying the opposite of what you mean, like calling a rainstorm "
        '"lovely weather". Situational irony is when events turn out contrary to expectations, such as a '
        "fire station burning down. Dramatic irony is when the audience knows something a character does "
        "not.",
        "When something is a coincidence.",
    ),
    (
        "What is a metaphor?",
        "A metaphor is a figure of speech that describes something by saying it is something else, to "
        'suggest a likeness between them. For example, "Time is a thief" suggests that time takes things '
        'from us without our noticing. Unlike a simile, a metaphor does not use "like" or "as".',
        "A comparison.",
    ),
    (
        "What is the greenhouse effect?",
        "The greenhouse effect is the warming of Earth's surface by gases in the atmosphere, such as carbon "
        "dioxide, methane and water vapour, that absorb heat radiated from the ground and send part of it "
        "back down. Without it, Earth's average temperature would be around −18 °C instead of about 15 °C. "
        "Burning fossil fuels adds more of these gases, strengthening the effect and warming the planet.",
        "When greenhouses make it hot.",
    ),
    (
        "What is a placebo?",
        "A placebo is a treatment with no active ingredient, such as a sugar pill, made to look like a real "
        "treatment. In clinical trials, comparing a drug with a placebo shows how much of the improvement "
        "comes from the drug itself. People sometimes feel better after a placebo simply because they expect "
        "to, which is called the placebo effect.",
        "A fake medicine that doctors give to trick you.",
    ),
    (
        'What does "compound interest" mean?',
        "Compound interest is interest calculated on both the original amount and the interest already "
        "added. For example, $1,000 at 5% a year earns $50 in the first year but $52.50 in the second, "
        "because interest is now paid on $1,050. Over long periods this snowball effect makes savings, or "
        "debts, grow much faster than with simple interest.",
        "Interest that is very high.",
    ),
    # everyday life
    (
        "How do I get a red wine stain out of a carpet?",
        "Act quickly: blot (do not rub) as much wine as you can with a clean cloth. Pour a little cold water "
        "on the stain and blot again, then cover it with a paste of three parts baking soda to one part "
        "water, let it dry, and vacuum it up. For stubborn stains, a tablespoon each of dish soap and white "
        "vinegar in two cups of warm water often helps; test any cleaner on a hidden spot first.",
        "Pour white wine on it.",
    ),
    (
        "What are some good houseplants for beginners?",
        "Pothos, snake plants, ZZ plants and spider plants are all very forgiving. They tolerate low light "
        "and the occasional missed watering, and most problems come from watering too often rather than too "
        "little. Water when the top few centimetres of soil feel dry, and make sure the pot has a drainage "
        "hole.",
        "Cactuses, because you never have to water them.",
    ),
    (
        "How can I save money on groceries?",
        "Plan your meals for the week and shop with a list, which cuts down on impulse buys and food waste. "
        "Compare unit prices rather than package prices, choose store brands, and buy produce that is in "
        "season. Cooking larger batches and freezing portions saves both money and time, and try not to shop "
        "when you are hungry, since people tend to buy more.",
        "Buy less food.",
    ),
    (
        "How do I politely decline an invitation?",
        "Thank the person, decline clearly, and keep the explanation short; you do not owe a detailed "
        "reason. For example: \"Thank you so much for inviting me! Unfortunately I can't make it on "
        'Saturday, but I hope you have a wonderful time." If you would like to see them another time, '
        "suggest an alternative so they know it is not personal.",
        "Just don't reply.",
    ),
]

# (prompt, good, worse, follow-up to the good answer, good answer to it, worse answer to it).
MULTI_TURN: list[tuple[str, str, str, str, str, str]] = [
    (
        "What is a good way to learn to touch type?",
        "Start by learning the home row (ASDF JKL;) and always return your fingers there. Use a free typing "
        "tutor that introduces a few keys at a time, and practise for 15 to 20 minutes a day without looking "
        "at the keyboard. Focus on accuracy first; speed comes naturally once the finger movements are "
        "automatic.",
        "Just type a lot.",
        "How long does it usually take?",
        "Most people who practise 15 to 30 minutes a day reach their old typing speed within two to four "
        "weeks, and go well beyond it after a couple of months. The first week is the slowest, so it helps "
        "not to switch back to hunt-and-peck when you are in a hurry.",
        "About a year.",
    ),
    (
        "Convert 100 degrees Fahrenheit to Celsius.",
        "Subtract 32 and multiply by 5/9: (100 − 32) × 5/9 = 68 × 5/9 ≈ 37.8 °C. So 100 °F is about "
        "37.8 °C, just above normal body temperature.",
        "About 50 °C.",
        "And what about 0 °F?",
        "Using the same formula, (0 − 32) × 5/9 ≈ −17.8 °C. So 0 °F is about −17.8 °C, well below freezing.",
        "0 °F is 0 °C.",
    ),
    (
        "Write a haiku about the sea.",
        "Here is a haiku about the sea:\n\nGrey waves fold and break\nsalt wind carries gull voices\nthe "
        "tide keeps its time",
        "The sea is big and blue and nice.",
        "Now make it about a storm.",
        "Here is a stormier one:\n\nBlack sky splits open\nwaves climb over the harbour\nboats pull at their "
        "ropes",
        "Storm storm storm.",
    ),
]

# Edge cases the `seed` filter must handle as it would in real oasst1.
DELETED_BEST = (  # the rank-0 reply was deleted: the rank-1 reply is the best that is left
    "How do I centre a div in CSS?",
    "Check out my website for the answer, link in my profile!",
    "The modern way is flexbox on the parent element:\n\n```css\n.parent {\n  display: flex;\n  "
    "justify-content: center;\n  align-items: center;\n}\n```\n\n`justify-content` centres the child "
    "horizontally and `align-items` centres it vertically; the parent needs a height for the vertical "
    "centring to show. With CSS grid, `display: grid; place-items: center;` does the same.",
    "Use the <center> tag.",
)
RANK_TIE = (  # two replies both ranked 0: the documented tie rule picks the smaller message_id
    "What is the tallest mountain in the world?",
    "Mount Everest, on the border between Nepal and China, is the tallest mountain above sea level, at "
    "8,849 metres.",
    "Measured from sea level, it is Mount Everest at 8,849 metres. Measured from base to peak, Mauna Kea in "
    "Hawaii is taller, at about 10,200 metres, but most of it lies under the ocean.",
)
OTHER_LANGUAGES = [  # (lang, prompt, good, worse): dropped by the English filter
    (
        "de",
        "Was ist der Unterschied zwischen Wetter und Klima?",
        "Wetter beschreibt den Zustand der Atmosphäre an einem bestimmten Ort zu einer bestimmten Zeit, zum "
        "Beispiel Regen oder Sonnenschein am heutigen Tag. Klima ist das durchschnittliche Wetter einer "
        "Region über einen langen Zeitraum, meist 30 Jahre.",
        "Klima ist das Wetter im Sommer.",
    ),
    (
        "es",
        "¿Cómo preparo un arroz blanco que quede suelto?",
        "Lava el arroz con agua fría hasta que salga casi transparente. Cocínalo con una vez y media su "
        "volumen de agua, a fuego bajo y con la olla tapada, durante unos 15 minutos. Déjalo reposar cinco "
        "minutos antes de servir y sepáralo con un tenedor.",
        "Con mucha agua.",
    ),
    (
        "fr",
        "Quelle est la capitale du Canada ?",
        "La capitale du Canada est Ottawa, dans la province de l'Ontario. Beaucoup de gens pensent à Toronto "
        "ou à Montréal, mais c'est Ottawa que la reine Victoria a choisie en 1857.",
        "Montréal.",
    ),
]


class Writer:
    """Builds oasst1 rows for one tree at a time; all ids, users and times come from one seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.users = [self.uuid() for _ in range(48)]
        self.rows: list[dict] = []

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def message(
        self, tree: str | None, parent: dict | None, text: str, role: str, lang: str, **extra
    ) -> dict:
        """One message row, created a few minutes after its parent (or on its tree's day, for a root)."""
        message_id = self.uuid()
        if parent is None:  # a new tree about every other day
            when = START + timedelta(days=len(self.rows) // 6, seconds=self.rng.randint(0, 86_000))
        else:
            delay = timedelta(seconds=self.rng.randint(90, 7200))
            when = datetime.fromisoformat(parent["created_date"]) + delay
        when += timedelta(microseconds=self.rng.randint(0, 999_999))
        votes = self.rng.randint(1, 6)
        row = {
            "message_id": message_id,
            "parent_id": None if parent is None else parent["message_id"],
            "user_id": self.rng.choice(self.users),
            "created_date": when.isoformat(timespec="microseconds"),
            "text": text,
            "role": role,
            "lang": lang,
            "review_count": self.rng.choice([3, 3, 3, 4, 5]),
            "review_result": True,
            "deleted": False,
            "rank": None,
            "synthetic": False,
            "model_name": None,
            "detoxify": None,
            "message_tree_id": tree or message_id,
            "tree_state": "ready_for_export",
            "emojis": {"name": ["+1"], "count": [votes]} if role == "assistant" or votes > 3 else None,
            "labels": None,
        }
        row.update(extra)
        if role == "assistant" and row["rank"]:  # the worse answers collect thumbs down
            row["emojis"] = {"name": ["-1"], "count": [votes]}
        assert tuple(row) == COLUMNS
        self.rows.append(row)
        return row

    def replies(self, parent: dict, lang: str, texts: list[str], ranks: list[int]) -> list[dict]:
        """Assistant replies to `parent`, made in a random order (a good answer may come second)."""
        order = list(range(len(texts)))
        self.rng.shuffle(order)
        tree = parent["message_tree_id"]
        made = {i: self.message(tree, parent, texts[i], "assistant", lang, rank=ranks[i]) for i in order}
        return [made[i] for i in range(len(texts))]

    def tree(self, lang: str, prompt: str, answers: list[str], ranks: list[int]) -> list[dict]:
        root = self.message(None, None, prompt, "prompter", lang)
        return self.replies(root, lang, answers, ranks)


def generate(seed: int) -> list[dict]:
    """All rows, tree after tree (in a seeded random order), each tree's messages in order of creation."""
    w = Writer(seed)
    jobs = [("en", item) for item in ENGLISH] + [("multi", item) for item in MULTI_TURN]
    jobs += [("deleted", DELETED_BEST), ("tie", RANK_TIE)] + [("other", item) for item in OTHER_LANGUAGES]
    w.rng.shuffle(jobs)
    for kind, item in jobs:
        if kind == "en":
            prompt, good, worse = item
            w.tree("en", prompt, [good, worse], [0, 1])
        elif kind == "multi":
            prompt, good, worse, follow_up, good2, worse2 = item
            best, _ = w.tree("en", prompt, [good, worse], [0, 1])
            question = w.message(best["message_tree_id"], best, follow_up, "prompter", "en")
            w.replies(question, "en", [good2, worse2], [0, 1])
        elif kind == "deleted":
            prompt, spam, good, worse = item
            removed, _, _ = w.tree("en", prompt, [spam, good, worse], [0, 1, 2])
            removed["deleted"] = True
            removed["review_result"] = False
            removed["emojis"] = {"name": ["-1", "red_flag"], "count": [4, 2]}
            labels = {"name": ["spam", "fails_task", "quality"], "value": [0.9, 0.8, 0.1], "count": [3, 3, 3]}
            removed["labels"] = labels
        elif kind == "tie":
            prompt, first, second = item
            w.tree("en", prompt, [first, second], [0, 0])
        else:
            lang, prompt, good, worse = item
            w.tree(lang, prompt, [good, worse], [0, 1])
    first = {}
    for row in w.rows:
        first.setdefault(row["message_tree_id"], len(first))
    return sorted(w.rows, key=lambda row: (first[row["message_tree_id"]], row["created_date"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the .jsonl file to write")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    rows = generate(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    trees = sum(row["parent_id"] is None for row in rows)
    print(f"wrote {len(rows)} messages in {trees} trees to {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
