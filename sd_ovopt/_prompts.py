"""The prompts calibration runs on when a caller gives none (the recipe's UNet, the tiny decoder)."""

__all__ = ["DEFAULT_CALIBRATION_PROMPTS"]

#: Prompts calibration uses when none are given: varied subjects, styles and compositions, so that
#: activation ranges cover what users ask for (none of them is a benchmark prompt).
DEFAULT_CALIBRATION_PROMPTS: tuple[str, ...] = (
    "a photo of a cat sitting on a sofa",
    "a mountain lake at sunset, highly detailed",
    "a bowl of fruit on a wooden table, still life painting",
    "a city street at night in the rain, neon lights",
    "a portrait of an old fisherman, oil painting",
    "an astronaut riding a horse on mars",
    "a red sports car on a coastal road",
    "a cozy living room with a fireplace, interior design",
    "a watercolor painting of a forest in autumn",
    "a futuristic city skyline, digital art",
    "a close-up photo of a dew drop on a leaf",
    "a green square on a white background",
    "a dog running on a beach, golden hour",
    "a medieval castle on a hill, fantasy illustration",
    "a plate of sushi, food photography",
    "a black and white photo of a busy train station",
)
