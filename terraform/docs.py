#!/usr/bin/env python3
"""Regenerates the reference in terraform/README.md: the requirements, providers,
resources, inputs and outputs tables between terraform-docs' own markers
(<!-- BEGIN_TF_DOCS --> and <!-- END_TF_DOCS -->), from the module's *.tf files.

terraform-docs itself is neither in Debian nor on PyPI, so this does the same
job for this module, with the standard library only: a small reader of the HCL
the module uses (blocks, attributes, strings with interpolations and escapes,
heredocs, comments), not an evaluator. Inputs and outputs are listed in file
order (variables.tf is grouped by topic), resources and data sources by address.

    terraform/docs.py           rewrite the README's reference
    terraform/docs.py --check   exit 1 (and show a diff) if the README is stale
"""

import difflib
import re
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parent
README = MODULE / "README.md"
BEGIN = "<!-- BEGIN_TF_DOCS -->"
END = "<!-- END_TF_DOCS -->"

HEREDOC = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_]*)[ \t]*\n")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class Parse(Exception):
    pass


# ----------------------------------------------------------------------------------------
# Scanning: where strings, heredocs, comments and bracketed expressions end


def skip_string(text, i):
    """text[i] is the opening quote; returns the index after the closing one."""
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        elif text.startswith(("$${", "%%{"), i):
            i += 3
        elif text.startswith(("${", "%{"), i):
            i = skip_template(text, i + 2)
        elif c == "\n":
            raise Parse(f"newline in a string at {line_of(text, i)}")
        else:
            i += 1
    raise Parse("unterminated string")


def skip_template(text, i):
    """i is just after `${` or `%{`; returns the index after the matching `}`."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c == '"':
            i = skip_string(text, i)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise Parse("unterminated interpolation")


def skip_heredoc(text, i, m):
    """m matched the heredoc's opening at i; returns the index of the newline ending its marker line."""
    body = m.end()
    end = re.compile(rf"^[ \t]*{re.escape(m.group(2))}[ \t]*$", re.M).search(text, body)
    if not end:
        raise Parse(f"unterminated heredoc {m.group(2)} at {line_of(text, i)}")
    return end.end()


def skip_comment(text, i):
    """A comment starts at i; returns the index of the newline ending it (or after */)."""
    if text.startswith("/*", i):
        j = text.find("*/", i + 2)
        if j < 0:
            raise Parse("unterminated comment")
        return j + 2
    j = text.find("\n", i)
    return len(text) if j < 0 else j


def scan(text, i, stop_at_newline):
    """From i, skips to the end of an expression (the newline at depth 0, when
    stop_at_newline) or of a block body (the `}` closing it); returns that index."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = skip_string(text, i)
            continue
        if text.startswith("<<", i):
            m = HEREDOC.match(text, i)
            if m:
                i = skip_heredoc(text, i, m)
                continue
        if c == "#" or text.startswith(("//", "/*"), i):
            i = skip_comment(text, i)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return i
            depth -= 1
        elif c == "\n" and depth == 0 and stop_at_newline:
            return i
        i += 1
    return i


def line_of(text, i):
    return text.count("\n", 0, i) + 1


# ----------------------------------------------------------------------------------------
# Parsing: a body is attributes (name, raw expression) and blocks (type, labels, body)


def parse_body(text, i=0, end=None):
    end = len(text) if end is None else end
    attrs, blocks = {}, []
    while i < end:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#" or text.startswith(("//", "/*"), i):
            i = skip_comment(text, i)
            continue
        m = IDENT.match(text, i)
        if not m:
            raise Parse(f"unexpected {text[i]!r} at line {line_of(text, i)}")
        name, i = m.group(0), m.end()
        while i < end and text[i] in " \t":
            i += 1
        if text[i] == "=" and not text.startswith("==", i):
            j = scan(text, i + 1, stop_at_newline=True)
            attrs[name] = text[i + 1:j].strip()
            i = j
            continue
        labels = []
        while text[i] != "{":
            if text[i] == '"':
                j = skip_string(text, i)
                labels.append(text[i + 1:j - 1])
                i = j
            elif text[i] in " \t":
                i += 1
            else:
                m = IDENT.match(text, i)
                if not m:
                    raise Parse(f"unexpected {text[i]!r} in the header of {name} at line {line_of(text, i)}")
                labels.append(m.group(0))
                i = m.end()
        close = scan(text, i + 1, stop_at_newline=False)
        if close >= len(text) or text[close] != "}":
            raise Parse(f"unclosed block {name} {labels} at line {line_of(text, i)}")
        blocks.append((name, labels, parse_body(text, i + 1, close)))
        i = close + 1
    return attrs, blocks


# ----------------------------------------------------------------------------------------
# Rendering values


def string_value(raw):
    """The text of a string literal or heredoc (descriptions)."""
    m = HEREDOC.match(raw)
    if m:
        lines = raw[m.end():].splitlines()[:-1]
        if m.group(1):
            indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=0)
            lines = [ln[indent:] for ln in lines]
        return " ".join(ln.strip() for ln in lines).strip()
    if not (raw.startswith('"') and raw.endswith('"')):
        raise Parse(f"not a string literal: {raw[:60]}")
    out, i, s = [], 0, raw[1:-1]
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(escapes.get(s[i + 1], s[i + 1]))
            i += 2
        elif s.startswith(("$${", "%%{"), i):
            out.append(s[i + 1:i + 3])
            i += 3
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def strip_comments(raw):
    """The expression without comments, keeping strings intact."""
    out, i = [], 0
    while i < len(raw):
        if raw[i] == '"':
            j = skip_string(raw, i)
            out.append(raw[i:j])
            i = j
        elif raw[i] == "#" or raw.startswith(("//", "/*"), i):
            i = skip_comment(raw, i)
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def one_line(raw):
    """A multi-line expression (a type, a default) on one line, as terraform-docs
    shows it: object attributes and list items joined with ", "."""
    lines = [ln.strip() for ln in strip_comments(raw).splitlines() if ln.strip()]
    text = ""
    for ln in lines:
        if not text or text.endswith(("(", "[", "{", ",")) or ln.startswith((")", "]", "}")):
            sep = ""
        else:
            sep = ", "
        text += sep + ln
    # Collapse the alignment spaces outside strings (`to         = list(string)`).
    out, i = [], 0
    while i < len(text):
        if text[i] == '"':
            j = skip_string(text, i)
            out.append(text[i:j])
            i = j
        elif text[i] == " ":
            j = i
            while j < len(text) and text[j] == " ":
                j += 1
            out.append(" ")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out).replace(",)", ")").replace(",]", "]").replace(",}", "}")


def cell(text):
    """Markdown table cell: pipes escaped, on one line."""
    return " ".join(text.replace("|", "\\|").split())


def code(text):
    return f"`{cell(text)}`"


# ----------------------------------------------------------------------------------------
# The reference


def module_blocks():
    blocks = []
    for tf in sorted(MODULE.glob("*.tf")):
        _, found = parse_body(tf.read_text())
        blocks += [(tf.name, *b) for b in found]
    return blocks


def reference():
    blocks = module_blocks()
    out = []

    (settings,) = [body for _, kind, _, body in blocks if kind == "terraform"]
    attrs, inner = settings
    providers = {}
    for kind, _, (pattrs, _) in inner:
        if kind == "required_providers":
            for name, raw in pattrs.items():
                spec = parse_body(raw.strip()[1:-1])[0]
                providers[name] = (string_value(spec["source"]), string_value(spec.get("version", '""')))
    out += ["### Requirements", "", "| Name | Version |", "|------|---------|",
            f"| terraform | {cell(string_value(attrs['required_version']))} |"]
    out += [f"| {name} | {cell(version)} |" for name, (_, version) in sorted(providers.items())]
    out += ["", "### Providers", "", "| Name | Source | Version |", "|------|--------|---------|"]
    out += [f"| {name} | `{source}` | {cell(version)} |" for name, (source, version) in sorted(providers.items())]

    resources = []
    for file, kind, labels, _ in blocks:
        if kind in ("resource", "data"):
            rtype, name = labels
            provider = rtype.split("_", 1)[0]
            source = providers.get(provider, (f"hashicorp/{provider}", ""))[0]
            section = "resources" if kind == "resource" else "data-sources"
            url = f"https://registry.terraform.io/providers/{source}/latest/docs/{section}/{rtype.split('_', 1)[1]}"
            address = f"{'data.' if kind == 'data' else ''}{rtype}.{name}"
            resources.append((rtype, name, kind, f"| [`{address}`]({url}) | {'resource' if kind == 'resource' else 'data source'} | {file} |"))
    out += ["", "### Resources", "", "| Name | Type | File |", "|------|------|------|"]
    out += [row for *_, row in sorted(resources, key=lambda r: (r[0], r[1], r[2]))]

    out += ["", "### Inputs", "", "| Name | Description | Type | Default | Required |",
            "|------|-------------|------|---------|:--------:|"]
    for _, kind, labels, (attrs, _) in blocks:
        if kind != "variable":
            continue
        if "description" not in attrs or "type" not in attrs:
            raise Parse(f"variable {labels[0]} needs a description and a type")
        default = attrs.get("default")
        out.append(f"| `{labels[0]}` | {cell(string_value(attrs['description']))} | {code(one_line(attrs['type']))} | "
                   f"{'n/a' if default is None else code(one_line(default))} | {'**yes**' if default is None else 'no'} |")

    out += ["", "### Outputs", "", "| Name | Description |", "|------|-------------|"]
    for _, kind, labels, (attrs, _) in blocks:
        if kind != "output":
            continue
        if "description" not in attrs:
            raise Parse(f"output {labels[0]} needs a description")
        out.append(f"| `{labels[0]}` | {cell(string_value(attrs['description']))} |")
    return "\n".join(out) + "\n"


def main(argv):
    check = argv[1:] == ["--check"]
    if argv[1:] not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 64
    readme = README.read_text()
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        print(f"{README}: needs one {BEGIN} and one {END} after it", file=sys.stderr)
        return 1
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    new = f"{head}{BEGIN}\n{reference()}{END}{tail}"
    if new == readme:
        return 0
    if check:
        sys.stdout.writelines(difflib.unified_diff(readme.splitlines(True), new.splitlines(True),
                                                   "terraform/README.md", "terraform/docs.py would write"))
        print("terraform/README.md is stale: run terraform/docs.py", file=sys.stderr)
        return 1
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
