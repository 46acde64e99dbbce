"""References in code and tests point into docs/design.md, and at sections that exist.

docs/design.md is the behaviour spec that ships with the repository; a reference to a document
outside it (the shared spec or lab notes) cannot be followed by someone who clones the repo.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(ROOT, "docs", "design.md")
SCANNED = (
    "controller",
    "exporter",
    "tests",
    "lab",
    "bench",
    "alerts",
    "dashboards",
    "docs",
    "packaging",
    "scripts",
    "README.md",
    "CONTRIBUTING.md",
)
OUTSIDE = re.compile(r"\bSPEC" + r" ?§|\bLAB\.md\b")  # split so this file does not match itself
REFERENCE = re.compile(r"design\.md`{0,2} ?§(\d+)(?:-§?(\d+))?")


def scanned_files():
    for top in SCANNED:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
            for name in filenames:
                if name.endswith((".py", ".md", ".yml", ".yaml", ".sh", ".spec", ".txt")):
                    yield os.path.join(dirpath, name)


def design_sections():
    with open(DESIGN, encoding="utf-8") as f:
        return {int(m.group(1)) for m in re.finditer(r"^## (\d+)\. ", f.read(), re.M)}


def test_no_reference_to_documents_outside_the_repository():
    found = []
    for path in scanned_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if OUTSIDE.search(line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not found, "cite docs/design.md §N instead:\n" + "\n".join(found)


def test_design_references_name_existing_sections():
    sections = design_sections()
    assert sections == set(range(1, max(sections) + 1)), f"sections numbered 1..N: {sections}"
    dangling = []
    seen = 0
    for path in scanned_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                for m in REFERENCE.finditer(line):
                    seen += 1
                    for number in filter(None, m.groups()):
                        if int(number) not in sections:
                            dangling.append(f"{os.path.relpath(path, ROOT)}:{n}: §{number}")
    assert seen > 0, "no reference to docs/design.md found: is the pattern still right?"
    assert not dangling, "references to sections docs/design.md does not have:\n" + "\n".join(
        dangling
    )
