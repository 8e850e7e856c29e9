"""placeholder while the tab is built"""


def build(ctx) -> None:
    import gradio as gr

    gr.Markdown("(being built)")
