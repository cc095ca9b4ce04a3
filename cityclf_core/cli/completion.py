"""cityclf completion bash|zsh|fish: a shell completion script, made from the command's own parser.

Commands, subcommands, options and their fixed choices complete; other words complete as file names.
No dependency: the script is plain shell, printed once and installed by the user.
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh", "fish")

INSTALL = {
    "bash": "cityclf completion bash > ~/.local/share/bash-completion/completions/cityclf",
    "zsh": "cityclf completion zsh > \"${fpath[1]}/_cityclf\"   (or: source <(cityclf completion zsh) in ~/.zshrc)",
    "fish": "cityclf completion fish > ~/.config/fish/completions/cityclf.fish",
}


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """'score' -> (its parser, its help), 'pixiv train' -> ..., for every (sub)subcommand."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for line in action._choices_actions:
                name = f"{prefix}{line.dest}"
                child = action.choices[line.dest]
                found[name] = (child, line.help or "")
                found.update(commands(child, name + " "))
    return found


def options(parser: argparse.ArgumentParser) -> list[tuple[list[str], str, list[str] | None, bool]]:
    """(option strings, help, fixed choices, takes a value) for each option of a parser."""
    found = []
    for action in parser._actions:
        if action.option_strings:
            takes = action.nargs != 0
            choices = [str(c) for c in action.choices] if action.choices else None
            found.append((action.option_strings, (action.help or "").replace("%(default)s", str(action.default)),
                          choices, takes))
    return found


def positional_choices(parser: argparse.ArgumentParser) -> list[str]:
    return [str(c) for a in parser._actions if not a.option_strings and a.choices
            and not isinstance(a, argparse._SubParsersAction) for c in a.choices]


def bash(parser: argparse.ArgumentParser) -> str:
    table = commands(parser)
    top = " ".join(n for n in table if " " not in n)
    cases = []
    for name, (child, _) in [("", (parser, "")), *table.items()]:
        subs = " ".join(n.split(" ")[-1] for n in table if n.startswith(name + " ") and n.count(" ") == name.count(" ") + 1) \
            if name else top
        words = " ".join([o for strings, _, _, _ in options(child) for o in strings] + positional_choices(child))
        value_cases = "".join(f"        {'|'.join(strings)}) COMPREPLY=($(compgen -W \"{' '.join(choices)}\" -- \"$cur\")); return;;\n"
                              for strings, _, choices, _ in options(child) if choices)
        cases.append(f'    "{name}")\n        case "$prev" in\n{value_cases}        esac\n'
                     f'        COMPREPLY=($(compgen -W "{words} {subs}" -- "$cur"))\n'
                     f'        [[ "$cur" == -* || -n "{subs}" && ${{#COMPREPLY[@]}} -gt 0 ]] || COMPREPLY+=($(compgen -f -- "$cur"))\n'
                     f"        ;;\n")
    known = " ".join(f'"{n}"' for n in table)
    return f"""# bash completion for cityclf (made by `cityclf completion bash`)
_cityclf() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path="" w candidate
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        [[ "$w" == -* ]] && continue
        candidate="${{path:+$path }}$w"
        for known in {known}; do [[ "$known" == "$candidate" ]] && path="$candidate"; done
    done
    case "$path" in
{''.join(cases)}    esac
}}
complete -o filenames -F _cityclf cityclf
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    return ("#compdef cityclf\n# zsh completion for cityclf (made by `cityclf completion zsh`): bash's, through "
            "bashcompinit\nautoload -U +X bashcompinit && bashcompinit\n" + bash(parser))


def fish(parser: argparse.ArgumentParser) -> str:
    def quote(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    table = commands(parser)
    lines = ["# fish completion for cityclf (made by `cityclf completion fish`)", "complete -c cityclf -f"]
    for name, (child, help_text) in table.items():
        parent = name.rsplit(" ", 1)[0] if " " in name else ""
        siblings = " ".join(n.split(" ")[-1] for n in table if (n.rsplit(" ", 1)[0] if " " in n else "") == parent)
        cond = ("__fish_use_subcommand" if not parent else
                f"__fish_seen_subcommand_from {parent.split(' ')[-1]}; and not __fish_seen_subcommand_from {siblings}")
        lines.append(f"complete -c cityclf -n {quote(cond)} -a {name.split(' ')[-1]} -d {quote(help_text)}")
    for name, (child, _) in [("", (parser, "")), *table.items()]:
        cond = f"__fish_seen_subcommand_from {name.split(' ')[-1]}" if name else "__fish_use_subcommand"
        for strings, help_text, choices, takes in options(child):
            flags = " ".join(f"-l {o[2:]}" if o.startswith("--") else f"-s {o[1:]}" for o in strings)
            value = (f" -x -a {quote(' '.join(choices))}" if choices else " -r -F" if takes else "")
            lines.append(f"complete -c cityclf -n {quote(cond)} {flags}{value} -d {quote(help_text[:80])}")
        if name and positional_choices(child):
            lines.append(f"complete -c cityclf -n {quote(cond)} -a {quote(' '.join(positional_choices(child)))}")
    return "\n".join(lines) + "\n"


def cmd_completion(args) -> int:
    print({"bash": bash, "zsh": zsh, "fish": fish}[args.shell](args.build_parser()), end="")
    return 0


def register(sub) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh or fish)",
                       description="Print a completion script for your shell; install it once:\n  "
                                   + "\n  ".join(INSTALL.values()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=cmd_completion)
