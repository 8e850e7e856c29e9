"""Dynamic Thresholding (CFG Scale Fix), the sd-dynamic-thresholding extension for A1111, as settings.

The names, defaults and bounds are the extension's sliders (scripts/dynamic_thresholding.py), and so are the
infotext keys, written as it writes them: "Dynamic thresholding enabled: True" and its seven base settings when on;
each scale's scheduler and minimum only when it is not Constant, the scheduler value only for a mode that uses it.
inference/dynamic_thresholding.py runs it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from personae.config.fields import Concept, setting

_ON = "dynamic_thresholding"
Mode = Literal["Constant", "Linear Down", "Cosine Down", "Half Cosine Down", "Linear Up", "Cosine Up", "Half Cosine Up",
               "Power Up", "Power Down", "Linear Repeating", "Cosine Repeating", "Sawtooth"]
_VALUED = ("Power Up", "Power Down", "Linear Repeating", "Cosine Repeating", "Sawtooth")


class ThresholdingSettings(Concept):
    TITLE: ClassVar[str] = "dynamic thresholding (CFG scale fix)"

    dynamic_thresholding: bool = setting(False, 'Dynamic Thresholding ("CFG Scale Fix", the sd-dynamic-thresholding '
                                                "extension): draw at a high --cfg with the value range of a lower "
                                                "--mimic-scale, so the picture follows the prompt hard without "
                                                "burning; k-diffusion samplers",
                                         infotext="Dynamic thresholding enabled", infotext_if=_ON)
    mimic_scale: float = setting(7.0, '"Mimic CFG Scale": the scale whose value range the picture keeps',
                                 infotext="Mimic scale", infotext_if=_ON, ge=1.0, le=30.0)
    dt_separate_feature_channels: bool = setting(True, '"Separate Feature Channels": each latent channel thresholded '
                                                       "on its own", infotext="Separate Feature Channels",
                                                 infotext_if=_ON)
    dt_scaling_startpoint: Literal["MEAN", "ZERO"] = setting("MEAN", '"Scaling Startpoint": scale from the mean '
                                                                     "(MEAN) or from zero (ZERO)",
                                                             infotext="Scaling Startpoint", infotext_if=_ON)
    dt_variability_measure: Literal["AD", "STD"] = setting("AD", '"Variability Measure": the spread, as the largest '
                                                                 "absolute deviation (AD) or the standard deviation "
                                                                 "(STD)", infotext="Variability Measure",
                                                           infotext_if=_ON)
    dt_interpolate_phi: float = setting(1.0, '"Interpolate Phi": the thresholded result mixed with the plain CFG '
                                             "result (1: thresholded only)", infotext="Interpolate Phi",
                                        infotext_if=_ON, ge=0.0, le=1.0)
    dt_threshold_percentile: float = setting(100.0, '"Top percentile of latents to clamp": the CFG result\'s spread '
                                                    "taken at this percentile", infotext="Threshold percentile",
                                             infotext_if=_ON, ge=90.0, le=100.0)
    dt_mimic_mode: Mode = setting("Constant", '"Mimic Scale Scheduler": how the mimic scale changes over the pass',
                                  infotext="Mimic mode", infotext_if=(_ON, "dt_mimic_scheduled"))
    dt_mimic_scale_min: float = setting(0.0, '"Minimum value of the Mimic Scale Scheduler"',
                                        infotext="Mimic scale minimum", infotext_if=(_ON, "dt_mimic_scheduled"),
                                        ge=0.0, le=30.0)
    dt_cfg_mode: Mode = setting("Constant", '"CFG Scale Scheduler": how the CFG scale changes over the pass',
                                infotext="CFG mode", infotext_if=(_ON, "dt_cfg_scheduled"))
    dt_cfg_scale_min: float = setting(0.0, '"Minimum value of the CFG Scale Scheduler"', infotext="CFG scale minimum",
                                      infotext_if=(_ON, "dt_cfg_scheduled"), ge=0.0, le=30.0)
    dt_scheduler_value: float = setting(4.0, '"Scheduler Value": the power of Power Up / Down, the repeats of the '
                                             "repeating modes and Sawtooth", infotext="Scheduler value",
                                        infotext_if=(_ON, "dt_scheduler_valued"), ge=0.0, le=40.0)

    @property
    def dt_mimic_scheduled(self) -> bool:
        return self.dt_mimic_mode != "Constant"

    @property
    def dt_cfg_scheduled(self) -> bool:
        return self.dt_cfg_mode != "Constant"

    @property
    def dt_scheduler_valued(self) -> bool:
        return self.dt_mimic_mode in _VALUED or self.dt_cfg_mode in _VALUED

    @model_validator(mode="after")
    def _tuning_needs_it(self):
        tuned = [name for name in type(self).model_fields if name.startswith("dt_") and name in
                 ThresholdingSettings.model_fields and getattr(self, name) != ThresholdingSettings.model_fields[
                     name].default]
        if (tuned or self.mimic_scale != 7.0) and not self.dynamic_thresholding:
            raise ValueError(f"{(tuned or ['mimic_scale'])[0]} tunes Dynamic Thresholding, which is off: set "
                             "dynamic_thresholding (--dynamic-thresholding)")
        return self
