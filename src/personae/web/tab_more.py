"""placeholder"""


def build_animate(ctx):
    import gradio as gr
    gr.Markdown("(being built)")


build_storyboard = build_compare = build_animate
