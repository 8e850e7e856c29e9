"""The shapes world, in one package: small procedural pictures in which every property can be checked exactly.

Each module sits at one of the project's layers (DESIGN.md), and imports only from its own layer or below,
as any other module does (tests/test_architecture.py holds the map):

    vocab, pretrain_settings, bench_settings,  config      the words, sizes and colours; the settings schemas
    render_settings
    scene, render                              data        the generator: render, caption, samples; `personae world
                                                           render` (pictures + captions into a folder; no torch)
    tokenizer, model                           models      the world's own CLIP tokenizer; the model and its weights
    check, bench_scores, evaluate, shots,      evaluation  the exact checker (and its style reading); bench scores;
    style                                                  generate and score; the 96-generation measure of shot
                                                           tokens; the 128-generation measure of a drawing style
    pretrain                                   training    pretraining the world model
    bench                                      jobs        `personae world bench` (the demo's world part: demo/world.py)

The shipped pretrained model (a diffusers folder) is in `weights/`.
"""
