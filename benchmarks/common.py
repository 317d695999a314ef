"""Shared pieces of the benchmarks: model construction, class names, timing and memory helpers."""

from __future__ import annotations

import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/bench.py` from anywhere, without installing the package
    sys.path.insert(0, str(REPO))

import maple_peft  # noqa: E402

TOKENIZER_DIR = REPO / "tests" / "fixtures" / "clip-tokenizer"
PROMPT_INIT = "a photo of a"
N_CTX = 2
DEPTH = 9

# A fixed vocabulary for ImageNet-like class names: common nouns and modifiers, with enough rare words that CLIP's
# BPE splits some of them into several tokens (as it does for "axolotl" or "mousetrap" in ImageNet).
WORDS = """
tabby cat tiger shark goldfish hammerhead stingray cock hen ostrich brambling goldfinch junco indigo bunting robin
bulbul jay magpie chickadee dipper kite eagle vulture owl salamander newt frog toad turtle terrapin gecko iguana
chameleon lizard alligator crocodile triceratops snake boa python cobra mamba viper rattlesnake trilobite scorpion
spider tarantula tick centipede grouse ptarmigan peacock quail partridge parrot macaw cockatoo lorikeet coucal
hornbill hummingbird jacamar toucan drake merganser goose swan tusker echidna platypus wallaby koala wombat
jellyfish anemone coral flatworm nematode conch snail slug chiton nautilus crab lobster crayfish hermit isopod
stork spoonbill flamingo heron egret bittern crane limpkin gallinule coot bustard turnstone sandpiper redshank
dowitcher oystercatcher pelican penguin albatross whale dugong sea lion chihuahua spaniel terrier retriever setter
pointer collie sheepdog shepherd poodle beagle dachshund greyhound wolfhound mastiff husky malamute dalmatian pug
wolf coyote dingo dhole hyena fox leopard jaguar lion cheetah bear mongoose meerkat beetle ladybug weevil fly bee
ant grasshopper cricket cockroach mantis cicada leafhopper lacewing dragonfly damselfly butterfly moth starfish
urchin cucumber rabbit hare angora hamster porcupine squirrel marmot beaver guinea pig sorrel zebra hog boar warthog
hippopotamus ox bison ram bighorn ibex hartebeest impala gazelle camel llama weasel mink polecat otter skunk badger
armadillo sloth orangutan gorilla chimpanzee gibbon siamang guenon baboon macaque langur colobus marmoset capuchin
howler titi lemur indri eel coho rock beauty anemonefish sturgeon gar lionfish puffer abacus abaya academic gown
accordion acoustic guitar aircraft carrier airliner airship altar ambulance amphibian analog clock apiary apron
ashcan assault rifle backpack bakery balance beam balloon ballpoint banjo barbell barber chair barn barometer barrel
barrow baseball basketball bassinet bassoon bathing cap bathtub beach wagon beacon beaker bearskin bell cote bib
bicycle bikini binder binoculars birdhouse boathouse bobsled bolo tie bonnet bookcase bookshop bottlecap bow
bowtie brass brassiere breakwater breastplate broom bucket buckle bulletproof vest bullet train butcher shop cab
caldron candle cannon canoe can opener cardigan carousel carpenter kit carton cassette castle catamaran cellular
chain saw chest chiffonier chime china cabinet christmas stocking church cinema cleaver cliff dwelling cloak clog
cocktail shaker coffee mug coffeepot coil combination lock computer keyboard confectionery container ship convertible
corkscrew cornet cowboy boot cradle crash helmet crate crib crock pot croquet ball crutch cuirass dam desk
dishrag dishwasher disk brake dock dogsled dome doormat drilling platform drum dumbbell dutch oven
""".split()


def class_names(n: int, seed: int = 0) -> list[str]:
    """`n` distinct ImageNet-like class names of 1 to 3 words joined by `_` (about 50/35/15 %), reproducibly."""
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        k = rng.choices((1, 2, 3), weights=(50, 35, 15))[0]
        name = "_".join(rng.choice(WORDS) for _ in range(k))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


SHAPES = {
    # `openai/clip-vit-base-patch16`: what the figures are measured on
    "vit-b16": dict(d_text=512, text_heads=8, d_vision=768, vision_heads=12, image_size=224, patch_size=16),
    # the smallest CLIP on which every measurement runs (depth 9 still needs 9 layers): the test suite's
    # correctness checks of the benchmark; its timings and memory figures mean nothing
    "tiny": dict(d_text=32, text_heads=4, d_vision=48, vision_heads=4, image_size=32, patch_size=8),
}


def image_size(shape: str = "vit-b16") -> int:
    """The input resolution of a CLIP shape (224 for ViT-B/16)."""
    return SHAPES[shape]["image_size"]


def clip_config(layers: int = 12, attn: str = "sdpa", shape: str = "vit-b16"):
    """A CLIP config of the given shape (`SHAPES`; default: that of `openai/clip-vit-base-patch16`), with `layers`
    layers per tower."""
    from transformers import CLIPConfig

    d = SHAPES[shape]
    projection = 512 if shape == "vit-b16" else 16
    config = CLIPConfig(
        text_config=dict(
            hidden_size=d["d_text"],
            intermediate_size=4 * d["d_text"],
            num_attention_heads=d["text_heads"],
            num_hidden_layers=layers,
            vocab_size=49408,
            projection_dim=projection,
        ),
        vision_config=dict(
            hidden_size=d["d_vision"],
            intermediate_size=4 * d["d_vision"],
            num_attention_heads=d["vision_heads"],
            num_hidden_layers=layers,
            image_size=d["image_size"],
            patch_size=d["patch_size"],
            projection_dim=projection,
        ),
        projection_dim=projection,
    )
    config._attn_implementation = attn
    return config


def build_clip(layers: int = 12, attn: str = "sdpa", seed: int = 0, device: str = "cpu", shape: str = "vit-b16"):
    """A randomly initialized CLIPModel (the cost of a forward pass does not depend on the weights' values)."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(clip_config(layers, attn, shape))
    return model.to(device)


def peft_model(model: torch.nn.Module, config: maple_peft.MaPLeConfig) -> torch.nn.Module:
    """`get_peft_model(model, config)` without the deprecation warning PEFT's own code raises on transformers 5 (see
    `maple_peft.console.peft_deprecation_quieted`), so that a benchmark's output holds only its figures."""
    from peft import get_peft_model

    from maple_peft.console import peft_deprecation_quieted

    with peft_deprecation_quieted():
        return get_peft_model(model, config)


def build_maple(layers: int = 12, attn: str = "sdpa", seed: int = 0, device: str = "cpu", shape: str = "vit-b16"):
    """`get_peft_model(CLIP, MaPLeConfig(n_ctx=2, depth=9, prompt_init="a photo of a"))` on a random CLIP of the
    given shape (default: ViT-B/16)."""
    clip = build_clip(layers, attn, seed, device="cpu", shape=shape)
    config = maple_peft.MaPLeConfig(
        n_ctx=N_CTX, depth=DEPTH, prompt_init=PROMPT_INIT, tokenizer_name_or_path=str(TOKENIZER_DIR)
    )
    torch.manual_seed(seed + 1)
    model = peft_model(clip, config)
    return model.to(device)


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ---- timing ------------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    reps: int,
    device: str,
    budget_s: dict[str, float] | None = None,
    default_budget_s: float = float("inf"),
) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, run in turns (A B C, C B A, A B C, ...) so that they share the noise.

    A function whose measured runs already total more than its budget (`budget_s[name]`, else `default_budget_s`)
    is not repeated further (at least one run is always made); the number of runs is `len(result[name])`.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    budget_s = budget_s or {}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            if times[name] and sum(times[name]) > budget_s.get(name, default_budget_s):
                continue
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- memory ------------------------------------------------------------------------------------------------------


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a block of code, in MiB above the memory in use when the block starts.

    CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. CPU: the peak resident set size of the
    process (`VmHWM` in /proc/self/status, reset with `/proc/self/clear_refs`); where the reset is unavailable,
    `getrusage(RUSAGE_SELF).ru_maxrss`, whose peak may then predate the block (`method` says which was used).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.method = ""
        self.start_mb = 0.0
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self.start_mb = _proc_status_mb("VmRSS") or 0.0
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM (the peak RSS) to the current RSS
            self.method = "peak RSS (VmHWM, reset via /proc/self/clear_refs)"
        except OSError:
            self.start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.method = "ru_maxrss (no reset available: the peak may predate the block)"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self.method.startswith("peak RSS"):
            self.peak_mb = _proc_status_mb("VmHWM") or 0.0
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @property
    def increase_mb(self) -> float:
        return max(self.peak_mb - self.start_mb, 0.0)


# ---- environment ---------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    import peft
    import transformers

    env: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "maple_peft": maple_peft.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    try:
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
        env["git_commit"] = commit or None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "maple_peft"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
        env["maple_peft_uncommitted_changes"] = bool(dirty)
    except OSError:
        env["git_commit"] = None
    return env
