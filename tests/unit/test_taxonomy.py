"""The shipped taxonomy, taxonomy checks, reading teacher replies, and de-duplication (offline)."""

import random
import re

import pytest

from tools.replies.parsing import ReplyParseError
from training.data.dedupe import Deduplicator, dedupe, jaccard, normalise, shingles
from training.data.taxonomy import DEFAULT_TAXONOMY, load_taxonomy
from training.data.teacher_replies import parse_requests

GOOD_SUB = """      - id: {id}
        name: {name}
        description: Something to draw in steps.
"""


def write(tmp_path, text, name="taxonomy.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def taxonomy_text(*subs, domain="crafts"):
    return (
        f"domains:\n  - id: {domain}\n    name: Crafts\n    description: Making things.\n"
        "    subcategories:\n" + "".join(subs)
    )


# --------------------------------------------------------------------------- shipped file


def test_shipped_taxonomy_has_eight_domains_and_75_plus_unique_subcategories():
    subs = load_taxonomy(DEFAULT_TAXONOMY)
    domains = {s.domain for s in subs}
    assert len(domains) == 8
    assert len(subs) >= 75
    assert len({s.id for s in subs}) == len(subs)
    for domain in domains:
        assert sum(s.domain == domain for s in subs) >= 5, domain
    assert all(s.name and s.description and s.domain_name for s in subs)


def test_shipped_guidance_subcategories_show_image_markers_in_their_examples():
    subs = load_taxonomy(DEFAULT_TAXONOMY)
    guided = [s for s in subs if s.needs_images]
    assert guided, "at least one guidance-mode subcategory"
    for sub in guided:
        assert all("<image>" in e for e in sub.examples), sub.id
    plain = [s for s in subs if not s.needs_images]
    assert not any("<image>" in e for s in plain for e in s.examples)


def test_a_json_taxonomy_loads_too(tmp_path):
    path = write(
        tmp_path,
        '{"domains": [{"id": "d", "name": "D", "description": "x", '
        '"subcategories": [{"id": "s-1", "name": "S", "description": "y", '
        '"examples": ["e"], "needs_images": true}]}]}',
        "t.json",
    )
    [sub] = load_taxonomy(path)
    assert (sub.id, sub.domain, sub.examples, sub.needs_images) == ("s-1", "d", ("e",), True)


# --------------------------------------------------------------------------- bad taxonomies


def test_duplicate_subcategory_id_names_both_lines(tmp_path):
    path = write(
        tmp_path,
        taxonomy_text(
            GOOD_SUB.format(id="kites", name="Kites"),
            GOOD_SUB.format(id="boats", name="Boats"),
            GOOD_SUB.format(id="kites", name="Kites again"),
        ),
    )
    with pytest.raises(ValueError) as info:
        load_taxonomy(path)
    message = str(info.value)
    assert "line 12" in message and "also used at line 6" in message and "rename" in message
    assert "subcategories[2]" in message


def test_duplicate_ids_across_domains_are_refused(tmp_path):
    text = taxonomy_text(GOOD_SUB.format(id="kites", name="K")) + taxonomy_text(
        GOOD_SUB.format(id="kites", name="K"), domain="toys"
    ).replace("domains:\n", "")
    with pytest.raises(ValueError, match="'kites' is also used"):
        load_taxonomy(write(tmp_path, text))


def test_every_problem_is_listed_with_its_line_and_fix(tmp_path):
    text = taxonomy_text(
        "      - id: kites\n        name: Kites\n",  # no description
        "      - id: Paper Boats\n        name: B\n        description: d\n",  # not a slug
        "      - id: masks\n        name: M\n        description: d\n        example: [x]\n",
        "      - id: cards\n        name: C\n        description: d\n        needs_images: maybe\n",
    )
    with pytest.raises(ValueError) as info:
        load_taxonomy(write(tmp_path, text))
    message = str(info.value)
    assert "4 problem(s)" in message
    assert re.search(
        r"line 6 \(domains\[0\]\.subcategories\[0\]\): missing 'description'; "
        r"add it",
        message,
    )
    assert "'Paper Boats' is not a slug" in message
    assert "unknown key(s) ['example']" in message and "examples" in message
    assert "'needs_images' must be a non-empty bool" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("domains: []\n", "top-level 'domains:' list"),
        ("- just\n- a list\n", "top-level 'domains:' list"),
        ("domains:\n  - id: a\n    name: A\n    description: x\n    subcategories: []\n", "'subcategories' is empty"),
        ("domains:\n  - id: a\n    name: [unclosed\n", "not a readable YAML file"),
        ("domains:\n  - just a string\n", "domains[0]: expected a mapping"),
    ],
)
def test_malformed_taxonomies_are_refused(tmp_path, text, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_taxonomy(write(tmp_path, text))


# --------------------------------------------------------------------------- teacher replies


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"requests": ["Draw a kite.", "Fold a boat."]}', ["Draw a kite.", "Fold a boat."]),
        (
            '<think>let me think {"a": 1}</think>\n```json\n["Draw a kite.", "Fold a boat."]\n```',
            ["Draw a kite.", "Fold a boat."],
        ),
        ("Sure!\n{'requests': ['Draw a kite.', 'Fold a boat.',]}", ["Draw a kite.", "Fold a boat."]),
        ("Here you go:\n1. Draw a kite.\n2) Fold a boat.\n", ["Draw a kite.", "Fold a boat."]),
        ('[{"request": "Draw a kite."}, {"text": "  Fold   a boat. "}]', ["Draw a kite.", "Fold a boat."]),
    ],
)
def test_teacher_replies_in_common_shapes_parse(reply, expected):
    assert parse_requests(reply) == (expected, 0)


def test_unusable_list_items_are_counted():
    assert parse_requests('{"requests": ["Draw a kite.", 3, "", null, "!!!"]}') == (["Draw a kite."], 4)


@pytest.mark.parametrize(
    "reply", ["I cannot help with that.", '{"requests": ["cut off', '{"requests": []}', "- only one bullet"]
)
def test_replies_without_requests_raise(reply):
    with pytest.raises(ReplyParseError):
        parse_requests(reply)


# --------------------------------------------------------------------------- de-duplication


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
    kept, dropped = dedupe(
        ["Show how to fold a paper crane.", "  show HOW to fold a paper-crane!! ", "Show how to fold a paper crane"]
    )
    assert kept == ["Show how to fold a paper crane."]
    assert dropped == {"exact": 2, "near": 0}


def test_near_duplicates_are_dropped_and_distinct_requests_kept():
    first = "Show how to bake a loaf of sourdough bread at home, step by step, from starter to slicing."
    reworded = "Show how to bake a loaf of sourdough bread at home step by step, from the starter to slicing"
    assert jaccard(shingles(normalise(first)), shingles(normalise(reworded))) >= 0.8
    kept, dropped = dedupe([first, reworded, "Show the life cycle of a frog.", "Show the life cycle of a butterfly."])
    assert kept == [first, "Show the life cycle of a frog.", "Show the life cycle of a butterfly."]
    assert dropped == {"exact": 0, "near": 1}


def test_threshold_decides_what_counts_as_near():
    a, b = "Draw a red kite over a green hill.", "Draw a blue kite over a green hill."
    assert dedupe([a, b], threshold=0.8)[1]["near"] == 0
    assert dedupe([a, b], threshold=0.4)[1]["near"] == 1
    with pytest.raises(ValueError, match="threshold"):
        Deduplicator(0)


def test_prefix_filtering_finds_the_same_duplicates_as_comparing_all_pairs():
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(60)]
    texts = []
    for _ in range(400):
        words = [rng.choice(vocab) for _ in range(rng.randint(1, 14))]
        texts.append(" ".join(words))
        words[rng.randrange(len(words))] = rng.choice(vocab)
        texts.append(" ".join(words))
    for threshold in (0.5, 0.8, 1.0):
        brute, seen = [], []
        for text in texts:
            key, tokens = normalise(text), shingles(normalise(text))
            if not any(key == k or jaccard(tokens, s) >= threshold - 1e-12 for k, s in seen):
                seen.append((key, tokens))
                brute.append(text)
        assert dedupe(texts, threshold)[0] == brute
