"""ControlNet units in a comparison: every unit checked before anything loads, each map drawn once and saved.

A suite's units are generate's own (config/addons.py ControlRef, inference/controlnet.py): this
module only names the variant and field a bad unit sits in, and keeps one file per distinct
control map (DIR/controls/...) for the report to show beside the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personae.config.addons import ControlRef
from personae.config.compare import CompareSuite
from personae.data.control import get_control_type
from personae.data.control.shuffle import numpy_seed
from personae.errors import UserError
from personae.inference.controlnet import PreparedControl, model_for, prepare_controls
from personae.jobs.compare_plan import Row, describe_unit, slug
from personae.media.grid import save_image
from personae.models.controlnet import check_available, resolve_controlnet


def _map_key(ref: ControlRef) -> tuple:
    """What decides a control map's pixels before it is fitted to a picture (not the weight, model or modes)."""
    return (ref.type.strip().lower(), str(Path(ref.image).expanduser().resolve()), tuple(sorted(ref.options.items())),
            ref.processor_res, ref.pixel_perfect)


def _prepare_unit(ref: ControlRef, where: str, allow_pickle: bool, seed: int = 0) -> PreparedControl:
    """generate's checks, one field at a time, so the error says which field of which unit is wrong."""
    field = "type"
    try:
        control_type = get_control_type(ref.type)
        field = "options"
        control_type.check_options(ref.options)
        field = "model"
        check_available(resolve_controlnet(model_for(ref), allow_pickle))
        field = "image"
        return prepare_controls([ref], allow_pickle, seed)[0]
    except UserError as exc:
        fix = exc.fix
        if field == "model":  # generate's advice names its --controlnet flag; a suite names the model in the unit
            suite_fix = (f"In the suite file, name it in the unit: {{type: {ref.type}, image: ..., "
                         "model: ./path/to/controlnet}.")
            fix = f"{fix} {suite_fix}" if fix else suite_fix
        raise UserError(f"{where}.{field}: {exc.what}", fix) from None


def prepare_suite_controls(suite: CompareSuite) -> dict[tuple, PreparedControl]:
    """Every unit of every variant (and of the suite) checked and its map drawn: bad input fails before generation.
    A random map (shuffle) is drawn from the suite's first seed, the one the report shows; each picture draws its
    own seed's (inference/txt2img.py)."""
    maps: dict[tuple, PreparedControl] = {}
    for variant in suite.variants:
        own = variant.controls is not None
        for i, ref in enumerate(variant.controls if own else suite.controls):
            where = (f'Variant "{variant.label}", controls[{i}]' if own
                     else f'The suite\'s controls[{i}] (used by variant "{variant.label}")')
            key = _map_key(ref)
            if key not in maps or ref.model != maps[key].ref.model:
                prepared = _prepare_unit(ref, where, allow_pickle=False,  # as the suite's models: no pickles
                                         seed=numpy_seed(suite.seeds[0]))
                maps.setdefault(key, prepared)
    return maps


def prepared_for(row: Row, maps: dict[tuple, PreparedControl]) -> list[PreparedControl]:
    """The row's units with the maps drawn once for the whole comparison."""
    return [maps[_map_key(ref)].with_ref(ref) for ref in row.controls]


@dataclass
class SavedMap:
    path: str  # relative to the comparison folder
    source: str  # the image it was drawn from


def save_maps(maps: dict[tuple, PreparedControl], work: Path) -> dict[tuple, SavedMap]:
    """One PNG per distinct control map: controls/<type>-<image name>.png (numbered when two share a name)."""
    saved, names = {}, set()
    for key, prepared in maps.items():
        name = slug(f"{prepared.ref.type}-{Path(prepared.ref.image).stem}")
        n, stem = 1, name
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.add(name)
        (work / "controls").mkdir(exist_ok=True)
        save_image(prepared.map, work / "controls" / f"{name}.png")
        saved[key] = SavedMap(f"controls/{name}.png", prepared.ref.image)
    return saved


def row_units(rows: list[Row], saved: dict[tuple, SavedMap]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Per row: (label, [(unit description, map file, source image)]) for the report; rows without units say so."""
    return [(row.label, [(describe_unit(ref, row.control_start, row.control_end), saved[_map_key(ref)].path,
                          saved[_map_key(ref)].source) for ref in row.controls]) for row in rows]
