"""Write the labelled curation dev set: good and bad (instruction, response) pairs for Humpback's rubric.

Self-curation must keep pairs that read as an AI assistant's answer to the instruction and drop the rest.
This file measures how well a rater does that (bench/curation.py reads it). Every row is one pair:

- label 1, kind "real": the first-turn instruction and its rank-0 answer from the shipped oasst1-format
  seed set (`BUILTIN_OASST_SEED`), i.e. what the rubric calls a 4 or a 5;
- label 0, kind "mismatched": each seed instruction with the answer of another seed pair that shares no
  content word with it (a seeded derangement: no pair keeps its own answer), i.e. off-topic, a 1;
- label 0, kind "promotional": answers written here in a shop, affiliate, SEO or forum/blog voice, each
  on the topic of the seed instruction it is paired with, i.e. "promotional, or written like a blog or
  forum post", a 1. Being on topic makes them the harder negatives: word overlap alone cannot reject them.

Adversarial negatives (label 0), what a likelihood score could fall for, because each is easy to predict
given its instruction:
- "restated": the instruction repeated as its answer (three templates);
- "paraphrased": the request restated in other words, written here, answering nothing;
- "non_answer": a reply written here on the instruction's topic that never answers it;
- "keyword_stuffed": the topic words of the instruction and its real answer, shuffled and repeated.

The rows are shuffled with a fixed seed, so any prefix (`bench/curation.py --limit N`) mixes all three
kinds. Rerunning the script writes the same file byte for byte.

    python scripts/make_curation_dev.py          # writes bench/data/curation_dev.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from selftaught.data.seed_pairs import BUILTIN_OASST_SEED, load_seed_pairs

SEED = 20230812
OUT = Path(__file__).resolve().parents[1] / "bench" / "data" / "curation_dev.jsonl"

# Words that say nothing about a topic: two texts sharing only these are still unrelated.
STOPWORDS = frozenset(
    [
        "about", "above", "after", "again", "also", "because", "been", "before", "being", "below",
        "between", "both", "can't", "could", "does", "doing", "don't", "down", "during", "each", "every",
        "first", "from", "good", "have", "having", "here", "into", "it's", "itself", "just", "like", "made",
        "make", "makes", "many", "more", "most", "much", "need", "once", "only", "other", "over", "same",
        "should", "some", "such", "than", "that", "that's", "their", "them", "then", "there", "there's",
        "these", "they", "this", "those", "through", "time", "under", "until", "very", "want", "way",
        "ways", "well", "what", "when", "where", "which", "while", "will", "with", "would", "you'll",
        "your", "yours",
    ]
)  # fmt: skip
WORD = re.compile(r"[a-z][a-z']+")

# (start of the seed instruction it answers, promotional / blog / forum answer). One per instruction.
PROMOTIONAL: list[tuple[str, str]] = [
    (
        "How long should I rest a steak",
        "Looking for the perfect steak? Check out our online butcher shop! We stock premium dry-aged "
        "ribeye, sirloin and wagyu, delivered to your door in 24 hours. Use code STEAK20 at checkout for "
        "20% off your first order. Free shipping on orders over $75!",
    ),
    (
        "What can I use instead of eggs in pancakes?",
        "OMG I have been looking for this too!! My kids are allergic and honestly it has been such a "
        "journey. Anyway, if you're on this blog you should totally subscribe to my newsletter, I post "
        "new allergy-friendly recipes every Tuesday and there's a giveaway this month. Link in my bio "
        "xoxo",
    ),
    (
        "Why does my rice always turn out sticky?",
        "Tired of sticky rice? The RiceMaster 3000 smart cooker does the thinking for you with 12 preset "
        "programs and fuzzy-logic technology. Thousands of five-star reviews! As an Amazon Associate we "
        "earn from qualifying purchases. Click the button below to check today's price.",
    ),
    (
        "How do I keep cut avocado from turning brown?",
        "Avocado tips, avocado hacks, how to store avocado, avocado browning, keep avocado green, best "
        "avocado storage, avocado saver container. In this article we will explore everything about "
        "avocados. Avocados are a popular fruit. Many people love avocados. Read on to learn more about "
        "avocados!",
    ),
    (
        "Why should I salt pasta water?",
        "Been a member of this forum since 2009 and this question comes up every few months lol. My nonna"
        " never measured anything and neither do I. Search function is your friend, mods please lock this"
        " thread. Also does anyone know if the meetup in Bologna is still happening?",
    ),
    (
        "Give me a simple idea for a vegetarian dinner.",
        "Before we get to the recipe, let me tell you about the summer I spent in Tuscany. The light was "
        "golden, the markets were full of tomatoes, and I fell in love with slow mornings. This post "
        "contains affiliate links, which means I earn a small commission if you buy through them. Scroll "
        "down for the printable recipe card and don't forget to pin this for later!",
    ),
    (
        "What's the difference between baking soda and baking powder?",
        "Great question! Our Premium Baking Essentials Bundle includes both, plus vanilla, cream of "
        "tartar and a set of measuring spoons, all for just $29.99. Limited stock available. Order now "
        "and bake like a professional. Satisfaction guaranteed or your money back!",
    ),
    (
        "How do I reverse a string in Python?",
        "Want to master Python in 30 days? Enroll in our bestselling Python Bootcamp, now 90% off for a "
        "limited time! Over 200,000 students have already enrolled. Lifetime access, certificate of "
        "completion and a 30-day money-back guarantee. Don't miss out, the sale ends tonight at midnight!",
    ),
    (
        "How do I handle an exception in Python?",
        "I had the same problem last week. Did you ever fix it? I tried a bunch of stuff from Stack "
        "Overflow but nothing worked, my script still crashes. Bumping this thread because I really need "
        "an answer before Monday. Thanks in advance to anyone who replies!!",
    ),
    (
        "What is a virtual environment in Python",
        "Our cloud development platform takes care of environments for you. Spin up a fully managed "
        "workspace in seconds, with no setup and no configuration. Trusted by teams at leading companies."
        " Start your free 14-day trial today, no credit card required. Book a demo with our sales team.",
    ),
    (
        "How do I centre a div in CSS?",
        "Top 10 CSS tricks every developer should know (number 7 will shock you)! Centering, flexbox, "
        "grid, and more. Before you keep reading, please disable your ad blocker to support this site. "
        "Subscribe to our YouTube channel for daily web development tips and smash that like button.",
    ),
    (
        "How do I read a text file line by line in Python?",
        "Hi all, first post here. I'm a freelance developer with 10 years of experience and I offer "
        "Python consulting at very reasonable rates. If you need help with file handling, scripts, "
        "automation or anything else, DM me or visit my portfolio website. Fast turnaround, five-star "
        "reviews on Fiverr.",
    ),
    (
        "What caused the fall of the Berlin Wall?",
        "Experience history like never before on our award-winning Berlin Wall walking tour! Our expert "
        "local guides take you to Checkpoint Charlie, the East Side Gallery and more. Tours depart daily "
        "at 10 am. Book online now and save 15%. Group discounts available.",
    ),
    (
        "Why did the Roman Empire split into East and West?",
        "This is one of my favourite topics! I actually wrote a whole series about it on my blog, so I "
        "won't repeat everything here. Part 1 covers the background and Part 2 is coming soon. If you "
        "enjoyed this, please share it with your friends and leave a comment below, it really helps the "
        "channel grow!",
    ),
    (
        "Who built the pyramids of Giza?",
        "Pyramids of Giza facts, who built the pyramids, pyramid builders, ancient Egypt pyramids, Giza "
        "pyramids history, Egypt travel guide, best time to visit Egypt. Discover the best Egypt vacation"
        " packages with our trusted travel partners. Compare prices and book today!",
    ),
    (
        "What was the Silk Road?",
        "Shop our exclusive Silk Road collection of hand-woven scarves, inspired by the ancient trade "
        "routes between China and the Mediterranean. 100% mulberry silk, ethically sourced. Perfect as a "
        "gift. Sign up for our mailing list and get free gift wrapping on your first order.",
    ),
    (
        "How do vaccines work?",
        "I've been reading about this for years on various forums and honestly the mainstream answers "
        "never satisfied me. Do your own research, that's all I'll say. I've got a whole folder of links "
        "if anyone wants them, just PM me. Not going to argue about it in the comments again.",
    ),
    (
        "What is photosynthesis?",
        "Struggling with biology homework? Get instant help from certified tutors 24/7! Our homework help"
        " app has answered over 10 million questions. Download it free from the App Store or Google Play "
        "and use promo code LEARN for one free week of premium.",
    ),
    (
        "Why does ice float on water?",
        "Such a cool question, literally haha! This reminds me of the time we went ice fishing up north "
        "with my uncle. Best weekend of my life. Anyway, I'm not a scientist, but I think it has "
        "something to do with science. Great blog btw, I've bookmarked it and will definitely be back!",
    ),
    (
        "What is the greenhouse effect?",
        "Reduce your carbon footprint today with SunBright solar panels! Homeowners save an average of "
        "$1,500 a year on energy bills. Get a free, no-obligation quote in under 2 minutes. Federal tax "
        "credits available for a limited time. Call now, our operators are standing by.",
    ),
    (
        "How does a rainbow form?",
        "rainbow, rainbows, how rainbows form, rainbow colors, rainbow science, rainbow facts for kids, "
        "double rainbow meaning, rainbow wallpaper, rainbow cake recipe. Rainbows are beautiful and "
        "everyone loves them. Keep reading this article to find out more about rainbows and why they are "
        "so beautiful.",
    ),
    (
        "What are some tips for travelling on a budget?",
        "Hey travellers! Before you go anywhere, check out my ultimate packing list and my favourite "
        "travel credit card, which I personally use and love. It earns double points on flights and has "
        "no foreign transaction fees. Apply through my referral link below and we both get a bonus!",
    ),
    (
        "How can I avoid jet lag?",
        "Introducing JetReset, the all-natural supplement that ends jet lag for good. Our proprietary "
        "blend of herbs is clinically inspired and loved by frequent flyers. Buy two bottles, get one "
        "free! These statements have not been evaluated by the Food and Drug Administration.",
    ),
    (
        "What do I need to rent a car abroad?",
        "Compare car rental deals from over 500 companies worldwide and save up to 70%! No hidden fees, "
        "free cancellation on most bookings. Our award-winning customer service is available around the "
        "clock. Search now and find your perfect ride in seconds.",
    ),
    (
        "What should I pack for a weekend hiking trip?",
        "Lol I just go with whatever is in my car. Honestly people overthink this stuff so much on this "
        "subreddit. Anyway, I'm selling my old tent and a pair of size 10 boots if anyone's interested, "
        "local pickup only, message me. Upvote if you agree people overpack.",
    ),
    (
        "How much water should I drink a day?",
        "Stay hydrated in style with the HydroMax smart bottle! It glows to remind you to drink and syncs"
        " with our app to track every sip. Available in 12 colours. Free shipping worldwide. Join the "
        "hydration revolution and tag us in your photos with #HydroMax!",
    ),
    (
        "What are some ways to improve my sleep?",
        "Sleep better tonight with the CloudRest memory-foam mattress. Try it risk-free for 100 nights "
        "and return it if you don't love it. Rated number one by sleep experts. This article is sponsored"
        " by CloudRest. Use our exclusive link to get $200 off your purchase.",
    ),
    (
        "How can I tell if I have a cold or the flu?",
        "I'm not a doctor, but I've been lurking on this health forum for like six years, and in my "
        "experience you just kind of know. My sister swears by elderberry. Also, has anyone else noticed "
        "the forum has been super slow lately? Admins, please fix the search.",
    ),
    (
        "How much exercise do adults need each week?",
        "Transform your body in just 21 days with our FitFast program! No gym needed. Join over one "
        "million members who have changed their lives. Click here to claim your free workout guide and "
        "get exclusive access to our private community. Results not typical.",
    ),
    (
        "How do I write a strong thesis statement?",
        "Need an essay fast? Our professional writers deliver plagiarism-free papers in any subject, with"
        " deadlines as short as 3 hours. Affordable prices and 24/7 support. Place your order today and "
        "get 15% off with the code ESSAY15.",
    ),
    (
        "How do I write a good opening line for a short story?",
        "As a published author (check out my three novels, available on Kindle!), I get asked this all "
        "the time. Writing is a journey, and every writer has to find their own voice. I talk about this "
        "and much more in my online masterclass, enrolment opens next week. Follow me for more writing "
        "content!",
    ),
    (
        'What is the difference between "affect" and "effect"?',
        "Grammar checkers are a game changer! Our browser extension catches every mistake and makes your "
        "writing shine. Used by over 30 million people. Install it free in one click, and upgrade to "
        "Premium for advanced suggestions. Write with confidence!",
    ),
    (
        "What is inflation?",
        "Protect your savings from inflation with gold! Our precious-metals IRA specialists can help you "
        "move your retirement account into physical gold and silver. Request your free investor kit "
        "today. Past performance does not guarantee future results.",
    ),
    (
        'What does "compound interest" mean?',
        "My financial freedom journey started when I discovered this one simple trick that banks don't "
        "want you to know. I went from broke to a six-figure income in just 18 months. Watch my free "
        "webinar to learn the secrets. Spots are limited, so register now!",
    ),
    (
        "How can I save money on groceries?",
        "Save big on groceries with the ShopSmart cashback app! Scan your receipts and earn points on "
        "every purchase at over 300 stores. Sign up with my referral code SAVE500 and get 500 bonus "
        "points instantly. Happy saving, fellow budgeters!",
    ),
    (
        "How do I get a red wine stain out of a carpet?",
        "Same thing happened to me at a party last year, ruined my brand new rug, I was so upset. Still "
        "haven't gotten over it honestly. Anyway, we ended up hiring a professional company in the Denver"
        " area and they were great, ask me for their number. Five stars, would recommend!",
    ),
    (
        "What are some good houseplants for beginners?",
        "Welcome to our plant shop! Browse hundreds of easy-care houseplants, delivered in eco-friendly "
        "packaging with a 30-day happiness guarantee. New customers get 10% off with code GREENTHUMB. "
        "Follow us on Instagram for plant care inspiration and weekly giveaways!",
    ),
    (
        "How can I stop procrastinating on my essay?",
        "Haha this thread is so relatable, I'm literally procrastinating right now by reading it. Been a "
        "member here since high school and the vibe is still the same. Anyway, back to scrolling. Let me "
        "know if anyone wants to start a study group on our Discord server!",
    ),
    (
        "What is a good way to learn to touch type?",
        "TypeMaster Pro: the number one typing software, trusted by schools worldwide. Gamified lessons, "
        "progress tracking and certificates. Download the free trial or buy the lifetime licence for just"
        " $19.99, today only. Compatible with Windows and Mac.",
    ),
    (
        "How do I politely decline an invitation?",
        "Etiquette tips, how to say no, declining invitations, polite phrases, social skills, manners, "
        "etiquette guide 2024, best etiquette books. In today's busy world, etiquette matters more than "
        "ever. Subscribe to our newsletter for more lifestyle content and exclusive partner offers.",
    ),
]


# --- adversarial negatives: texts a likelihood score could fall for (all written here) ---------------------

# (start of the seed instruction, a restatement of the request in other words: no answer at all)
PARAPHRASED: list[tuple[str, str]] = [
    (
        "How long should I rest a steak",
        "You would like to know how many minutes a steak ought to sit and rest once it has finished cooking.",
    ),
    (
        "What is photosynthesis?",
        "The question is what photosynthesis is, that is, what the process called photosynthesis means.",
    ),
    (
        "How do vaccines work?",
        "You are asking how vaccines work: in what way a vaccine does its job inside the body.",
    ),
    (
        "Why does ice float on water?",
        "So the question is why ice floats on water instead of sinking to the bottom of it.",
    ),
    (
        "How do I centre a div in CSS?",
        "You want to centre a div with CSS, in other words put a div element in the middle using CSS.",
    ),
    ("What is inflation?", "What you would like explained is inflation: what the word inflation refers to."),
    (
        "How can I avoid jet lag?",
        "You are looking for ways to avoid getting jet lag, meaning how to not suffer from jet lag.",
    ),
    ("Why is the ocean salty?", "Your question asks why the water of the ocean is salty rather than fresh."),
    (
        "How do I reverse a string in Python?",
        "You need to know how to reverse a string in Python, that is, how to turn a Python string backwards.",
    ),
    ("What is a black hole?", "The thing you want to know about is a black hole, and what a black hole is."),
    ("Who was Ada Lovelace?", "You are asking who Ada Lovelace was, the person named Ada Lovelace."),
    (
        "How much water should I drink a day?",
        "The question here is how much water a person should drink every day, the daily amount of water.",
    ),
    ("What is DNA?", "You would like to find out what DNA is, what the thing called DNA actually is."),
    (
        "Why do we have seasons?",
        "You are wondering why there are seasons, why we have seasons at all during the year.",
    ),
    (
        "How do I politely decline an invitation?",
        "You want a polite way of declining an invitation, how to say no to an invitation politely.",
    ),
]

# (start of the seed instruction, a reply on its topic that never answers it)
NON_ANSWERS: list[tuple[str, str]] = [
    (
        "How long should I rest a steak",
        "Steak is one of the most popular dishes in the world, and people have cooked beef over fire for "
        "thousands of years. Cuts such as ribeye, sirloin and fillet each have their fans, and every family "
        "seems to have its own traditions around cooking meat.",
    ),
    (
        "How do vaccines work?",
        "Vaccines are a big topic in medicine and public health. They have a long history, are discussed "
        "often in the news, and many people have strong opinions about them. Scientists continue to study "
        "vaccines every year.",
    ),
    (
        "Why does ice float on water?",
        "Ice and water are two forms of the same substance, and both are very common on Earth. Ice appears "
        "in winter, in glaciers and in drinks, while water covers most of the planet's surface.",
    ),
    (
        "What is the tallest mountain in the world?",
        "Mountains are found on every continent, and climbing them has fascinated people for centuries. "
        "Some of the world's mountain ranges are very old, others are still rising, and many are popular "
        "with hikers and photographers.",
    ),
    (
        "How do I centre a div in CSS?",
        "CSS is the language that styles web pages, and divs are among the most common HTML elements. "
        "Layout in CSS has changed a lot over the years, and web developers often discuss the best "
        "practices for it.",
    ),
    (
        "What caused the fall of the Berlin Wall?",
        "The Berlin Wall is one of the best-known structures of the twentieth century. Pieces of it are now "
        "displayed in museums around the world, and many tourists visit the remaining sections in Berlin "
        "every year.",
    ),
    (
        "How can I save money on groceries?",
        "Groceries are a regular part of every household budget. Supermarkets, local markets and online "
        "shops all sell food, and prices vary from place to place and from season to season.",
    ),
    (
        "What is the greenhouse effect?",
        "The greenhouse effect is a subject that comes up in science classes, newspapers and political "
        "debates. It is connected to many discussions about the planet and its future, and it is often "
        "mentioned in documentaries.",
    ),
    (
        "How do I read a text file line by line in Python?",
        "Python is a popular programming language, and text files are one of the most common kinds of "
        "files. Many Python programs work with files of some kind, and there is a lot written about Python "
        "online.",
    ),
    (
        "Why do heavy and light objects fall",
        "Falling objects have interested thinkers since ancient times. Aristotle, Galileo and Newton all "
        "wrote about motion, and the history of physics is full of famous experiments with things that fall.",
    ),
    (
        "How can I tell if an egg is still fresh?",
        "Eggs are used in cooking all over the world, in breakfasts, cakes, sauces and many other dishes. "
        "Chickens, ducks and quails all lay eggs, and egg sizes and shell colours differ between breeds.",
    ),
    (
        "What does the `yield` keyword do in Python?",
        "Python has many keywords, and `yield` is one of them. Keywords are reserved words of the language, "
        "and every Python programmer meets them sooner or later while reading or writing code.",
    ),
    (
        "How do I get a red wine stain out of a carpet?",
        "Red wine is enjoyed at dinners and parties everywhere, and carpets are found in many homes. Both "
        "come in many varieties, and spills are a common part of life in any household.",
    ),
    (
        "What was the Silk Road?",
        "The Silk Road is a famous name from history that still appears in books, films and travel "
        "brochures today. Many places along it have become popular destinations for travellers interested "
        "in the past.",
    ),
    (
        "How early should I arrive at the airport",
        "Airports are busy places with shops, restaurants and long corridors. International flights connect "
        "cities all over the world, and millions of passengers travel through airports every day.",
    ),
    (
        "Why is the Magna Carta important?",
        "The Magna Carta is a document from medieval England that many people have heard of. Copies of it "
        "are kept in several places, and it is often mentioned in discussions about history and law.",
    ),
    (
        "What is a placebo?",
        "Placebos come up often in conversations about medicine and research. The word itself is old, and "
        "people are frequently curious about it when they read about medical studies.",
    ),
    (
        "How do I write a strong thesis statement?",
        "Thesis statements are part of academic writing, and students write them in many subjects. "
        "Teachers, textbooks and writing centres all talk about thesis statements in their own way.",
    ),
    (
        "What is an algorithm?",
        "Algorithms are mentioned everywhere today, from news articles about social media to computer "
        "science classes. The word has become very common, and many people use it in everyday conversation.",
    ),
    (
        "Is it bad to crack your knuckles?",
        "Knuckle cracking is a habit that many people have, and it is something people notice and talk "
        "about. Some do it often, others never, and it can be heard in classrooms and offices alike.",
    ),
]

# Ways to restate a request as if it were the answer (the instruction's own words, repeated).
RESTATEMENTS = (
    "{instruction}\n\n{instruction}",
    "You asked: {instruction} That is the question: {instruction}",
    "{instruction} This is a question that many people ask. {instruction}",
)
RESTATED_COUNT = 15
KEYWORD_STUFFED_COUNT = 20


def content_words(text: str) -> set[str]:
    """Lowercased words of four letters or more that are not stopwords: what a text is about."""
    return {w for w in WORD.findall(text.lower()) if len(w) >= 4 and w not in STOPWORDS}


def unrelated(instruction: str, response: str) -> bool:
    """True when the response shares no content word with the instruction."""
    return not content_words(instruction) & content_words(response)


def mismatched_answers(pairs: list[dict], rng: random.Random) -> list[int]:
    """For each pair i, the index of another pair whose answer is unrelated to i's instruction.

    A seeded random single cycle (Sattolo's shuffle: never i -> i) is repaired by swapping targets: for
    each i whose borrowed answer is related, find k such that exchanging their targets leaves both rows
    borrowing an unrelated answer. The result is still a permutation, so every answer is used once.
    """
    n = len(pairs)
    target = list(range(n))
    for i in range(n - 1, 0, -1):  # Sattolo: j < i, so the permutation is one cycle with no fixed point
        j = rng.randrange(i)
        target[i], target[j] = target[j], target[i]

    def fits(i: int, j: int) -> bool:
        return i != j and unrelated(pairs[i]["instruction"], pairs[j]["response"])

    for i in range(n):
        if fits(i, target[i]):
            continue
        candidates = [k for k in range(n) if fits(i, target[k]) and fits(k, target[i])]
        if not candidates:
            raise SystemExit(f"no unrelated answer can be swapped in for seed pair {pairs[i]['id']}")
        k = rng.choice(candidates)
        target[i], target[k] = target[k], target[i]
    assert sorted(target) == list(range(n)) and all(fits(i, target[i]) for i in range(n))
    return target


def written_rows(pairs: list[dict], texts: list[tuple[str, str]], kind: str) -> list[dict]:
    """One row per written answer of `kind`, paired with the seed instruction it names (label 0)."""
    rows = []
    for number, (start, answer) in enumerate(texts, start=1):
        matches = [p for p in pairs if p["instruction"].startswith(start)]
        if len(matches) != 1:
            raise SystemExit(f"{kind} answer {number}: {len(matches)} seed instructions start {start!r}")
        rows.append(
            {"id": f"{kind}-{number:02d}", "instruction": matches[0]["instruction"], "response": answer,
             "label": 0, "kind": kind}
        )  # fmt: skip
    return rows


def restated_rows(pairs: list[dict], rng: random.Random) -> list[dict]:
    """The instruction repeated as its own answer (RESTATEMENTS in turn), for a seeded sample of pairs."""
    picked = rng.sample(pairs, RESTATED_COUNT)
    texts = [
        (p["instruction"], RESTATEMENTS[n % len(RESTATEMENTS)].format(instruction=p["instruction"]))
        for n, p in enumerate(picked)
    ]
    return written_rows(pairs, texts, "restated")


def keyword_stuffed_rows(pairs: list[dict], rng: random.Random) -> list[dict]:
    """The topic words of the instruction and its real answer, shuffled and repeated: all keywords, no
    answer (what an SEO page or a spammer writes), for a seeded sample of pairs."""
    texts = []
    for p in rng.sample(pairs, KEYWORD_STUFFED_COUNT):
        words = sorted(content_words(p["instruction"]) | content_words(p["response"]))
        stuffed = [w for _ in range(3) for w in rng.sample(words, min(len(words), 10))]
        texts.append((p["instruction"], " ".join(stuffed).capitalize() + "."))
    return written_rows(pairs, texts, "keyword_stuffed")


def build_rows(pairs: list[dict], seed: int) -> list[dict]:
    """All rows of the dev set, shuffled with `seed`."""
    rng = random.Random(seed)
    real = [
        {"id": f"real-{p['id']}", "instruction": p["instruction"], "response": p["response"],
         "label": 1, "kind": "real"}
        for p in pairs
    ]  # fmt: skip
    target = mismatched_answers(pairs, rng)
    mismatched = [
        {"id": f"mismatched-{p['id']}", "instruction": p["instruction"], "response": pairs[j]["response"],
         "label": 0, "kind": "mismatched"}
        for p, j in zip(pairs, target, strict=True)
    ]  # fmt: skip
    rows = real + mismatched + written_rows(pairs, PROMOTIONAL, "promotional")
    # Drawn after the rows above, so adding the adversarial kinds left the earlier rows as they were.
    rows += restated_rows(pairs, rng) + written_rows(pairs, PARAPHRASED, "paraphrased")
    rows += written_rows(pairs, NON_ANSWERS, "non_answer") + keyword_stuffed_rows(pairs, rng)
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSONL file")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the derangement and the row order")
    args = parser.parse_args()

    pairs, _ = load_seed_pairs(str(BUILTIN_OASST_SEED), size=None)
    rows = build_rows(pairs, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = Counter(row["kind"] for row in rows)
    print(
        f"wrote {len(rows)} rows to {args.out}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )


if __name__ == "__main__":
    main()
