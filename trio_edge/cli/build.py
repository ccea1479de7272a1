"""trio-build DIR: build TensorRT engines for an export directory, on the GPU that will run them.

DIR is a directory written by trio-export. Builds one engine per graph from its ONNX file (decode and
prefill optimization profiles for the embed and segment graphs, one profile for select graphs), writes
<graph>.engine beside it and records the TensorRT version, GPU, compute capability and profiles in
manifest.json; trio-run DIR --backend tensorrt --device cuda then runs them. Engines are tied to the
TensorRT version and GPU model: build on the target (e.g. on the Jetson itself).

Needs TensorRT 10 and a CUDA GPU: pip install 'trio-edge[tensorrt]' on x86-64/SBSA servers; on Jetson it
comes with JetPack (sudo apt install python3-libnvinfer). trio-export and trio-check work without it.
"""

from __future__ import annotations

import argparse

from .common import CliParser, cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-build", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="export directory written by trio-export")
    parser.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16",
                        help="kernels TensorRT may use besides fp32 (default fp16; bf16 needs sm_80 or newer)")
    parser.add_argument("--workspace", type=float, default=4.0, metavar="GB",
                        help="workspace memory pool limit per engine in GiB (default 4)")
    parser.add_argument("--timing-cache", metavar="PATH",
                        help="TensorRT timing cache file: read if it exists, written after the build "
                             "(speeds up rebuilds on the same GPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..exporters.engine_build import build_engines

    result = build_engines(args.directory, precision=args.precision, workspace_gb=args.workspace,
                           timing_cache=args.timing_cache, progress=not args.quiet)
    section = result["tensorrt"]
    for name, engine in section["engines"].items():
        print(f"{name:<22}{engine['bytes'] / 1e6:>10.2f} MB  {len(engine['profiles'])} profile(s)  "
              f"{result['seconds'][name]:>7.1f} s")
    print(f"built {len(section['engines'])} engine(s) with TensorRT {section['version']} for {section['gpu']} "
          f"(sm_{section['compute_capability'].replace('.', '')}, {section['precision']}) in {args.directory}")


if __name__ == "__main__":
    import sys

    sys.exit(main())
