"""What the benchmarks share: the conv DEQ cell's size arguments."""


def add_cell_arguments(parser):
    """Batch 32, 16 channels, 32x32, float64: the size the issues fix for benchmarks."""
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--contraction", type=float, default=0.95)
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved repetitions; the best time is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", help="also write the results here")
    return parser
