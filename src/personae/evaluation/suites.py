"""Built-in prompt sets in the spirit of the DreamBooth paper's evaluation (our own wording).

The paper asks three things of a taught subject: can it be put somewhere new
(recontextualization), given things to wear or hold (accessorization, live subjects only),
and changed in its own properties (colour, material, shape). `{token}` is the trigger
word, `{class}` the class noun.
"""

from __future__ import annotations

RECONTEXT = [
    "{token} {class} in a dense rainforest",
    "{token} {class} on fresh snow",
    "{token} {class} on a sandy beach",
    "{token} {class} on an old cobblestone street",
    "{token} {class} on a pink blanket",
    "{token} {class} on wooden floorboards",
    "{token} {class} in front of a city skyline",
    "{token} {class} in front of snowy mountains",
    "{token} {class} in front of a blue house",
    "{token} {class} in a field of wheat",
    "{token} {class} under an autumn tree",
    "{token} {class} floating on a lake",
    "{token} {class} on a mirror",
    "{token} {class} on a crowded sidewalk",
    "{token} {class} on a dirt road",
]
OBJECT_PROPERTIES = [
    "a red {token} {class}",
    "a purple {token} {class}",
    "a shiny metallic {token} {class}",
    "a wet {token} {class}",
    "a cube-shaped {token} {class}",
]
LIVE_ACCESSORIES = [
    "{token} {class} wearing a red hat",
    "{token} {class} wearing a santa hat",
    "{token} {class} wearing a striped rainbow scarf",
    "{token} {class} wearing a top hat and a monocle",
    "{token} {class} dressed as a chef",
    "{token} {class} dressed as a firefighter",
    "{token} {class} dressed as a police officer",
    "{token} {class} wearing pink sunglasses",
    "{token} {class} wearing a yellow shirt",
    "{token} {class} dressed as a purple wizard",
]
LIVE_PROPERTIES = [
    "a red {token} {class}",
    "a purple {token} {class}",
    "a shiny {token} {class}",
    "a wet {token} {class}",
    "a cube-shaped {token} {class}",
]

PROMPT_SETS = {
    "object": RECONTEXT + OBJECT_PROPERTIES,  # 20 prompts
    "live": RECONTEXT[:10] + LIVE_ACCESSORIES + LIVE_PROPERTIES,  # 25 prompts
}


def category(prompt: str) -> str:
    """Which of the paper's questions a built-in prompt asks ("" for the user's own prompts)."""
    if prompt in RECONTEXT:
        return "recontextualization"
    if prompt in LIVE_ACCESSORIES:
        return "accessorization"
    if prompt in OBJECT_PROPERTIES or prompt in LIVE_PROPERTIES:
        return "property change"
    return ""


def fill(template: str, token: str, class_word: str) -> str:
    """Put the token and class into a prompt, tidying the spaces an empty value leaves."""
    text = template.replace("{token}", token).replace("{class}", class_word)
    return " ".join(text.split())
