"""Regenerate ``src/dyn/tokenizer/vocab.txt``, the built-in tokenizer's vocabulary.

Usage: ``python tools/make_vocab.py [--check]`` (``--check`` fails if the file would change).

The corpus is English text every Python install has offline: the reference topics that
``help()`` shows (``pydoc_data.topics``) and the docstrings of the standard library's own
modules, read with ``ast`` (nothing is imported, so no module's side effects run). Files
are read in sorted order and ties are broken by the piece itself, so the output depends
only on the Python version's stdlib; the shipped file came from CPython 3.11.7.

The vocabulary, in this order:

1. the 256 bytes ``<0x00>``..``<0xFF>`` (ids = byte values), the fallback for anything;
2. whitespace runs (indentation, blank lines), every printable ASCII character with and
   without a leading space, and the other characters the corpus uses;
3. the numbers 0-999 with and without a leading space (the pre-tokenizer cuts digit runs
   into groups of up to three, as cl100k does);
4. every two-letter lowercase pair, so an unknown word splits into pairs, not letters;
5. frequent punctuation runs, word starts (with their space) and word endings, scored by
   how many corpus words they begin or end;
6. a hand-written list of everyday English words (``ENGLISH``);
7. whole corpus words (with and without a leading space) by frequency, up to
   ``VOCAB_SIZE`` (the corpus runs out first: about 27k pieces in all);
8. ``<|endoftext|>``.
"""

from __future__ import annotations

import argparse
import ast
import string
import sys
import sysconfig
import warnings
from collections import Counter
from pathlib import Path

from dyn.tokenizer.words import EOS_TOKEN, PRETOKENIZE, escape_piece

VOCAB_SIZE = 32_000
OUT = Path(__file__).resolve().parents[1] / "src" / "dyn" / "tokenizer" / "vocab.txt"

PUNCT_RUNS = 600
WORD_STARTS = 3_000
WORD_ENDS = 2_500
MAX_PIECE = 20  # longer words are rare enough to split
SKIP_DIRS = {"site-packages", "test", "tests", "__pycache__", "idle_test"}
RESERVED = set("ĠĊĉ")  # the escapes of vocab.txt cannot occur literally in a piece


# Everyday words the technical corpus lacks (his, dog, garden...), so that ordinary
# prose gets BPE-like counts. Listed once, by hand; each goes in as " word", " Word" and
# "Word" (sentence start).
ENGLISH = """
a about above across act action actually add added after afternoon afternoons again against
age ago agree agreed ahead air all allow almost alone along already also although always am
among an and angry animal animals another answer any anyone anything appear apple april area
areas arm arms army around arrive arrived art as ask asked at attack aunt august autumn away
baby back bad bag ball bank bar base bath be beach bean beans bear beat beautiful beauty
became because become bed bedroom been beer before began begin behind being believe bell
below beside best better between beyond big bike bill bird birds birth bit bitter black
blood blow blue board boat body bone book books born borrow boss both bottle bottom bought
bowl box boy boys brain bread break breakfast breath bridge brief bright bring broke broken
brother brothers brought brown budget build building built burn bus business busy but butter
buy by cake call called calm came camera camp can cannot capital captain car card care
careful carried carry case cat catch caught cause center central century certain chair
chance change changed chapter charge cheap check cheese chest chicken chief child children
chin choice choose church circle cities city claim class clean clear clearly climb clock
clocks close closed clothes cloud club coast coat coffee cold college color come comes
coming committee common community company complete computer concern condition consider
continue control cook cool copy corner cost could council count country countries couple
courage course court cousin cover cow crazy cream crime cross crowd cry culture cup current
cut dad daily damage dance danger dangerous dark data date daughter day days dead deal dear
death debate december decide decided decision deep defense degree demand describe desert
design desk detail develop die died difference different difficult dinner direction director
dirty discover discovered discuss disease distance do doctor does dog dogs doing dollar
dollars done door doors double doubt down draw dream dress drink drive driver drop drove dry
during dust duty each ear early earth easily east easy eat economic economy edge education
effect effort egg eggs eight either election else empty end enemy energy enjoy enough enter
entire environment equal escape especially even evening event ever every everyone everything
evidence exactly example except exercise expect experience explain eye eyes face fact
factory fail fair fall fallen family famous far farm farmer fast fat father fear february
feel feeling feet fell felt few field fight figure fill film final finally find fine finger
finish fire firm first fish five flat floor flower flowers fly follow food foot for force
foreign forest forget forgot form former forward found four fox free freedom fresh friday
friend friends from front fruit full fun funny future game garden gas gate gave general get
gets getting gift girl girls give given glad glass go god goes going gold gone good got
government grand grandfather grandmother grass gray great green grew ground group grow
growing growth guard guess gun guy hair half hall hand hands hang happen happened happy hard
has hat hate have having he head health hear heard heart heat heavy held hello help her here
herself high hill him himself his history hit hold hole holiday home hope horse hospital hot
hotel hour hours house houses how however huge human hundred hungry hurt husband i ice idea
if ill image imagine important in inside instead interest into iron is island it its itself
jacket january job join joke journey joy judge july jump jumped june just keep kept key kid
kids kill kind king kitchen knee knew know known lady lake land language large last late
later laugh laughed law lay lazy lead leader learn least leave led left leg legs less let
letter library lie life light like likely line lion lip list listen little live lived lives
living local long look looked looking lose lost lot loud love lovely low luck lunch machine
made magazine main major make man manager many map march mark market married marry matter
may maybe me meal mean meat medical meet meeting member memory men message met middle might
mile miles milk mind minute minutes miss mission mister moment monday money month months
moon more morning most mother mountain mouth move movie much music must my myself name
nation national natural nature near nearly neck need neighbor neither never new news
newspaper next nice night nine no nobody noise none nor north nose not note nothing notice
november now number nurse ocean october of off offer office officer often oh oil old on once
one only open or orange order other others our out outside over own page pain paint pair
paper parent parents park part party pass past pay peace people perhaps period person phone
picture piece pig place plan plane plant play player please pocket poem point police poor
popular position possible pound power present president pretty price prison private problem
produce program protect proud public pull push put queen question quick quickly quiet quite
race radio rain raise ran rather reach read ready real really reason receive recent record
red remember report rest result return rich ride right ring rise risk river road rock roof
room rose roses round rule run running sad safe said sail salt same sand saturday save saw
say school science scientist scientists sea season seat second secret see seem seen sell
send sense sent september serious serve set seven several shall shape share sharp she sheep
ship shirt shoe shoes shop short shot should shoulder shout show shut sick side sign silence
silver simple since sing single sir sister sit six size skin sky sleep slow slowly small
smell smile smith snow so social society soft soldier some someone something sometimes son
song soon sorry sound south space speak special speed spend spent spoke sport spring square
staff stage stand star start state station stay still stone stood stop store stories storm
story straight strange street strong student students study stupid subject success such
sudden suddenly sugar summer sun sunday supper sure surface surprise sweet swim table tail
take taken talk tall taste tax tea teach teacher team tear telephone television tell ten
terrible than thank thanks that the theater their them themselves then there these they
thick thin thing things think third thirteen thirty this those though thought thousand
thousands three threw through throw thursday thus ticket tie till time tiny tired to today
together told tomato tomatoes tomorrow tonight too took tooth top total touch tour toward
town toy trade train travel tree trees trip trouble truck true trust truth try tuesday turn
twelve twenty twice two uncle under understand until up upon us use used usual usually
valley very victory view village visit voice vote wait walk walked walking wall want war
warm was wash watch water wave way we weak wear weather wednesday week weeks weight welcome
well went were west wet what wheel when where whether which while white who whole whom whose
why wide wife wild will win wind window wine winter wish with within without woke woman
women won wonder wonderful wood word words wore work worked worker world worried worry worse
worst would write writer written wrong wrote yard year years yellow yes yesterday yet you
young your yourself youth
"""


def corpus() -> list[str]:
    import pydoc_data.topics

    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return texts


def usable(piece: str) -> bool:
    bare = piece.replace(" ", "").replace("\n", "").replace("\t", "")
    return (
        0 < len(piece) <= MAX_PIECE
        and not RESERVED & set(piece)
        and (bare == "" or bare.isprintable())
        and not (piece.startswith("<") and piece.endswith(">"))
    )


def build(texts: list[str]) -> list[str]:
    chunks: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for text in texts:
        chunks.update(PRETOKENIZE.findall(text))
        chars.update(text)
    words = {c: n for c, n in chunks.items() if c.strip().isalpha()}

    pieces: dict[str, None] = {}  # insertion-ordered set

    def add(piece: str) -> None:
        if usable(piece) and len(pieces) < VOCAB_SIZE - 257:
            pieces.setdefault(piece)

    def top(counts: Counter[str], k: int) -> list[str]:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [p for p, _ in ranked if usable(p) and p not in pieces][:k]

    for n in (1, 2, 3, 4, 8, 12, 16):
        add(" " * n)
        add("\n" + " " * n)
    for p in ("\n", "\n\n", "\t", "\t\t", "\n\t"):
        add(p)
    for ch in string.printable.strip():
        add(ch)
        add(" " + ch)
    for ch, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])):
        if not ch.isspace():
            add(ch)
    for i in range(1000):
        add(str(i))
        add(f" {i}")
    for a in string.ascii_lowercase:
        for b in string.ascii_lowercase:
            add(a + b)

    punct = Counter({c: n for c, n in chunks.items() if not c.strip().isalnum() and c.strip()})
    for p in top(punct, PUNCT_RUNS):
        add(p)

    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for word, n in words.items():
        body = word.lstrip(" ")
        lead = word[: len(word) - len(body)]
        for k in range(2, min(len(body), 8)):
            starts[lead + body[:k]] += n
        for k in range(2, min(len(body), 7)):
            ends[body[-k:]] += n
    for p in top(starts, WORD_STARTS):
        add(p)
    for p in top(ends, WORD_ENDS):
        add(p)

    for w in ENGLISH.split():
        for p in (" " + w, " " + w.capitalize(), w.capitalize()):
            add(p)
    for p in top(Counter(words), VOCAB_SIZE):
        add(p)
    lines = [f"<0x{b:02X}>" for b in range(256)]
    lines += [escape_piece(p) for p in pieces]
    lines.append(EOS_TOKEN)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if vocab.txt would change")
    args = parser.parse_args()
    text = "\n".join(build(corpus())) + "\n"
    if args.check:
        same = OUT.exists() and OUT.read_text("utf-8") == text
        print("vocab.txt is up to date" if same else "vocab.txt differs; rerun without --check")
        return 0 if same else 1
    OUT.write_text(text, "utf-8")
    print(f"wrote {OUT} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
