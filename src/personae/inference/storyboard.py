"""Storyboard panels: a scene's shot, angle, description and characters become a prompt and a seed.

A scene's shot maps to a learned shot token (`close-up -> <cu_trg>`) when that token is
loaded, and always to a written phrase ("close-up shot"), so one scene file works with
or without trained shot tokens. Characters bring their description, LoRA (active only
in their panels) and seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from personae.config.generate import GenerateSettings
from personae.config.storyboard import DEFAULT_SHOT_PHRASES, SHOT_ALIASES, SHOTS, Scene, StoryboardSettings
from personae.data.captions import fill_template
from personae.errors import UserError

if TYPE_CHECKING:  # the pipeline's modules load when a panel is drawn: a storyboard's mistakes are said first
    from personae.inference.session import Session
    from personae.inference.txt2img import GeneratedImage


def _words(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def shot_names(settings: StoryboardSettings) -> list[str]:
    """Every shot kind a scene may name: the built-in kinds, then any the file adds in shot_phrases / shot_tokens."""
    return list(dict.fromkeys([*SHOTS, *settings.shot_phrases, *settings.shot_tokens]))


def _names(key: str) -> set[str]:
    """What a scene may write for shot kind `key`: its name, its words, its abbreviations and other names, each with
    or without a trailing "shot", in any case, with "-", "_" or spaces."""
    names = {_words(n) for n in [key, DEFAULT_SHOT_PHRASES.get(key, key), *SHOT_ALIASES.get(key, [])]}
    return names | {n + " shot" for n in names} | {n.removesuffix(" shot") for n in names}


def canonical_shot(shot: str, settings: StoryboardSettings) -> str:
    """The shot kind `shot` names (a kind, or an alias such as ECU, OTS, wide); an unknown name lists the valid ones."""
    wanted = _words(shot)
    for key in shot_names(settings):
        if wanted in _names(key):
            return key
    accepted = [key + (f" ({', '.join(SHOTS[key][1])})" if key in SHOTS else "") for key in shot_names(settings)]
    raise UserError(f'Unknown shot "{shot}".', "Use one of: " + "; ".join(accepted) + ". To add a kind of your own, "
                    "give it words under shot_phrases.")


def shot_token(shot: str, settings: StoryboardSettings, loaded_tokens: set[str]) -> str:
    """The learned token a panel of this shot kind starts with, or "" (none mapped to it, none loaded, or "no")."""
    token = settings.shot_tokens.get(shot, "")
    if not token or settings.use_shot_tokens == "no":
        return ""
    if token in loaded_tokens:
        return token
    if settings.use_shot_tokens == "yes":
        raise UserError(f'use_shot_tokens is yes but the token "{token}" for {shot} is not loaded.',
                        "Add its embedding file to shot_embeddings, or set use_shot_tokens: auto.")
    return ""


def shot_phrase(shot: str, settings: StoryboardSettings) -> str:
    return settings.shot_phrases.get(shot) or DEFAULT_SHOT_PHRASES.get(shot, shot)


def panel_prompt(scene: Scene, settings: StoryboardSettings, loaded_tokens: set[str]) -> str:
    shot = canonical_shot(scene.shot, settings)
    token = shot_token(shot, settings, loaded_tokens)
    phrase = shot_phrase(shot, settings)
    people = [settings.characters[c].prompt or c if c in settings.characters else c for c in scene.characters]
    text = settings.template.format(style=settings.style_trigger, shot_token=token, shot_phrase=phrase,
                                    angle=scene.angle, description=scene.description, characters=", ".join(people),
                                    extra=scene.prompt)
    return fill_template("{caption}", caption=text)


def tokenless_shots(settings: StoryboardSettings, loaded_tokens: set[str]) -> list[str]:
    """The shot kinds the scenes use that get no token although shot tokens are loaded (said once, as a note)."""
    if not loaded_tokens & set(settings.shot_tokens.values()) or settings.use_shot_tokens == "no":
        return []
    used = dict.fromkeys(canonical_shot(s.shot, settings) for s in settings.scenes)
    return [shot for shot in used if settings.shot_tokens.get(shot) not in loaded_tokens]


def panel_seed(scene: Scene, settings: StoryboardSettings) -> int:
    if scene.seed is not None:
        return scene.seed
    if settings.seed_policy == "fixed":
        return settings.seed
    if settings.seed_policy == "per_character" and scene.characters:
        character = settings.characters.get(scene.characters[0])
        if character and character.seed is not None:
            return character.seed
        return (settings.seed + zlib.crc32(scene.characters[0].encode())) % 2**32
    return (settings.seed + scene.number) % 2**32


def render_panel(session: Session, scene: Scene, settings: StoryboardSettings) -> tuple[GeneratedImage, str]:
    """One panel; character LoRAs are switched on only for the characters in the scene."""
    loaded_tokens = {e.token for e in session.embeddings}
    prompt = panel_prompt(scene, settings, loaded_tokens)
    loras = []  # the session's LoRAs (loaded in the order of addon_loras(settings)) that this panel uses
    for lora, ref in zip(session.loras, addon_loras(settings)):
        owner = _lora_owner(ref.path, settings)
        if owner is None or owner in scene.characters:
            loras.append(lora)
    generate = GenerateSettings(**settings.sampling(), model=settings.model, prompt=prompt,
                                seed=panel_seed(scene, settings))
    from personae.inference.txt2img import txt2img

    return txt2img(generate, session, loras=loras)[0], prompt


def _lora_owner(path: str, settings: StoryboardSettings) -> str | None:
    for name, character in settings.characters.items():
        if character.lora and character.lora.path == path:
            return name
    return None


def addon_loras(settings: StoryboardSettings):
    return ([settings.style_lora] if settings.style_lora else []) + [c.lora for c in settings.characters.values() if c.lora]


def addon_embeddings(settings: StoryboardSettings):
    return list(settings.shot_embeddings) + [c.embedding for c in settings.characters.values() if c.embedding]


@dataclass
class PanelRecord:
    number: int
    shot: str
    prompt: str
    seed: int
    file: str
    sha256: str
