"""`personae captions DIR`: list, search and edit a training set's captions in bulk."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # every caption of a prepared set (or of a folder of images with .txt captions)
  personae captions ./prepared
  # the captions that mention glasses
  personae captions ./prepared --search glasses
  # put the trigger first in every caption, drop a tag, see the result before writing it
  personae captions ./prepared --prepend "sks man" --remove-tag "blurry" --dry-run
  # fix a word everywhere, and add a style tag at the end of the captions that mention a pencil
  personae captions ./drawings --replace "colour" "color"
  personae captions ./drawings --search pencil --append "drawn by KSH style"

Tags are the comma-separated parts of a caption (compared without case, "_" = space). Edits run in the order
replace, remove-tag, prepend, append; with --search only the matching captions are edited. Only existing
caption files are written (a prepared set's manifest.jsonl follows them); nothing is created beside an image.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("captions", help="list, search and edit a training set's captions", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="List the captions of a `personae prepare` output or of a folder of images with "
                                   ".txt captions, and edit them in bulk as tag managers do.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--search", metavar="TEXT", help="only captions containing TEXT (any case)")
    p.add_argument("--replace", nargs=2, metavar=("OLD", "NEW"), help="replace the text OLD by NEW")
    p.add_argument("--remove-tag", action="append", default=[], metavar="TAG", help="remove a tag (repeatable)")
    p.add_argument("--prepend", action="append", default=[], metavar="TAG", help="put a tag first (repeatable)")
    p.add_argument("--append", action="append", default=[], metavar="TAG", help="put a tag last (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.data.caption_editor import CaptionEdit, edit_captions, load_captions, matches
    from personae.errors import UserError

    if args.replace and not args.replace[0]:
        raise UserError("--replace needs a non-empty OLD text.", 'e.g. --replace "colour" "color"')
    for flag, tags in (("--remove-tag", args.remove_tag), ("--prepend", args.prepend), ("--append", args.append)):
        if any("," in t or not t.strip() for t in tags):
            raise UserError(f"{flag} takes one tag: no commas, not empty (got {tags}).",
                            f"Repeat the option for several tags, e.g. {flag} a {flag} b.")
    captions = load_captions(args.dir)
    edit = CaptionEdit(tuple(args.replace) if args.replace else None, tuple(args.remove_tag), tuple(args.prepend),
                       tuple(args.append))
    if not edit:
        shown = [i for i in captions.items if matches(i.caption, args.search)]
        for item in shown:
            print(f"{item.name}: {item.caption if item.text_file else '(no caption file)'}")
        found = f" ({len(shown)} contain {args.search!r})" if args.search else ""
        print(f"{len(captions.items)} images in {args.dir}{found}")
        return 0
    result = edit_captions(captions, edit, args.search, args.dry_run)
    for change in result.changes:
        print(f"{change.item.name}:\n  - {change.old}\n  + {change.new}")
    for item, why in result.skipped:
        print(f"{item.name}: not edited: {why}")
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} {len(result.changes)} of {result.matched} captions"
          + (f" containing {args.search!r}" if args.search else "") + (" (dry run: nothing written)" if args.dry_run else ""))
    return 0
