"""Published facts of the datasheet machines: GPU peaks, the host a typical server pairs with each, prices.

Peaks are dense (no 2:4 sparsity) tensor-core rates with FP32 accumulation. Device memory is what the
driver reports as total (a little under the marketing size). Prices are on-demand list prices or
purchase prices as published around 2024-2025; they move, so each names its source.
"""

from __future__ import annotations

from runtime.profiler.datasheet import DatasheetMachine, Gpu, Host

NV = "https://www.nvidia.com/"

A5000 = Gpu(
    "NVIDIA RTX A5000",
    23.7,
    111.1,
    768,
    "4.0",
    source=NV + "content/dam/en-zz/Solutions/design-visualization/rtx-a5000/"
    "nvidia-rtx-a5000-datasheet.pdf; NVIDIA Ampere GA102 GPU architecture whitepaper (BF16 dense)",
)
A40 = Gpu(
    "NVIDIA A40",
    44.4,
    149.7,
    696,
    "4.0",
    source=NV + "content/dam/en-zz/Solutions/Data-Center/a40/proviz-print-nvidia-a40-datasheet.pdf",
)
L4 = Gpu("NVIDIA L4", 22.0, 121.0, 300, "4.0", source=NV + "en-us/data-center/l4/ (L4 datasheet)")
T4 = Gpu(
    "Tesla T4",
    14.6,
    65.0,
    320,
    "3.0",
    dtype="float16",
    source=NV + "en-us/data-center/tesla-t4/ (T4 datasheet: 65 TFLOPS mixed-precision FP16)",
)
A100_PCIE = Gpu(
    "NVIDIA A100 80GB PCIe",
    79.2,
    312.0,
    1935,
    "4.0",
    source=NV + "en-us/data-center/a100/ (A100 datasheet, 80GB PCIe column)",
)
H100_PCIE = Gpu(
    "NVIDIA H100 PCIe",
    79.1,
    756.0,
    2000,
    "5.0",
    source=NV + "en-us/data-center/h100/ (H100 datasheet, PCIe column: 1513 TFLOPS BF16 sparse)",
)
H100_SXM = Gpu(
    "NVIDIA H100 80GB HBM3",
    79.1,
    989.0,
    3350,
    "5.0",
    source=NV + "en-us/data-center/h100/ (H100 datasheet, SXM column: 1979 TFLOPS BF16 sparse)",
)
H200 = Gpu(
    "NVIDIA H200",
    139.8,
    989.0,
    4800,
    "5.0",
    source=NV + "en-us/data-center/h200/ (H200 datasheet, SXM column)",
)
RTX4090 = Gpu(
    "NVIDIA GeForce RTX 4090",
    23.6,
    165.2,
    1008,
    "4.0",
    source="NVIDIA Ada GPU architecture whitepaper, appendix table (BF16 with FP32 accumulate 165.2 dense)",
)

AMD = "https://www.amd.com/en/products/"
INTEL = "https://ark.intel.com/"
ZEN3_FLAGS = ("avx2", "fma")
ICELAKE_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
SPR_FLAGS = ICELAKE_FLAGS + ("avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")

EPYC_7453 = Host(
    "AMD EPYC 7453 28-Core Processor",
    28,
    56,
    2.75,
    32,
    8,
    3200,
    18.0,
    256,
    ZEN3_FLAGS,
    source=AMD + "cpu/amd-epyc-7453 (28 cores, 8 x DDR4-3200)",
)
XEON_8380_X2 = Host(
    "Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz",
    80,
    160,
    2.3,
    64,
    16,
    3200,
    12.0,
    512,
    ICELAKE_FLAGS,
    source=INTEL + " Xeon Platinum 8380 (40 cores, 8 x DDR4-3200 per socket; two sockets)",
)
EPYC_7R13_G6 = Host(
    "AMD EPYC 7R13 Processor",
    32,
    64,
    2.65,
    32,
    8,
    3200,
    18.0,
    256,
    ZEN3_FLAGS,
    source="https://aws.amazon.com/ec2/instance-types/g6/ (g6.16xlarge: 64 vCPU, 256 GiB, 3rd gen AMD EPYC)",
)
XEON_8259CL_G4DN = Host(
    "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz",
    16,
    32,
    2.5,
    64,
    6,
    2933,
    12.0,
    128,
    ICELAKE_FLAGS,
    source="https://aws.amazon.com/ec2/instance-types/g4/ (g4dn.8xlarge: 32 vCPU, 128 GiB, Cascade Lake)",
)
EPYC_7V13_NC = Host(
    "AMD EPYC 7V13 64-Core Processor",
    24,
    24,
    2.45,
    32,
    8,
    3200,
    18.0,
    220,
    ZEN3_FLAGS,
    source="https://learn.microsoft.com/azure/virtual-machines/nc-a100-v4-series "
    "(NC24ads_A100_v4: 24 vCPU, 220 GiB)",
)
XEON_8480_LAMBDA = Host(
    "Intel(R) Xeon(R) Platinum 8480+",
    13,
    26,
    2.0,
    64,
    8,
    4800,
    12.0,
    200,
    SPR_FLAGS,
    source="https://lambda.ai/service/gpu-cloud (1x H100 instances: 26 vCPU; Xeon 8480+)",
)
XEON_8568Y_HGX = Host(
    "INTEL(R) XEON(R) PLATINUM 8568Y+",
    12,
    24,
    2.3,
    64,
    8,
    5600,
    12.0,
    256,
    SPR_FLAGS,
    source=INTEL + " Xeon Platinum 8568Y+ (48 cores, 8 x DDR5-5600 per socket); "
    "one GPU's eighth of a 2-socket HGX H200 server",
)
RYZEN_7950X = Host(
    "AMD Ryzen 9 7950X 16-Core Processor",
    16,
    32,
    4.5,
    32,
    2,
    5200,
    25.0,
    128,
    ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"),
    source=AMD + "processors/desktops/ryzen/7000-series/amd-ryzen-9-7950x.html (16 cores, 2 x DDR5-5200)",
)

MACHINES = (
    DatasheetMachine(
        "a5000-epyc7453",
        A5000,
        EPYC_7453,
        0.27,
        None,
        "https://www.runpod.io/pricing (RTX A5000, about $0.27/h, 2024-2025)",
    ),
    DatasheetMachine(
        "a40-xeon8380",
        A40,
        XEON_8380_X2,
        0.40,
        None,
        "https://www.runpod.io/pricing (A40, about $0.40/h, 2024-2025)",
    ),
    DatasheetMachine(
        "l4-aws-g6-16xlarge",
        L4,
        EPYC_7R13_G6,
        3.397,
        None,
        "https://aws.amazon.com/ec2/pricing/on-demand/ (g6.16xlarge, us-east-1)",
    ),
    DatasheetMachine(
        "t4-aws-g4dn-8xlarge",
        T4,
        XEON_8259CL_G4DN,
        2.176,
        None,
        "https://aws.amazon.com/ec2/pricing/on-demand/ (g4dn.8xlarge, us-east-1)",
    ),
    DatasheetMachine(
        "a100-pcie-80gb-azure-nc24ads",
        A100_PCIE,
        EPYC_7V13_NC,
        3.673,
        None,
        "https://azure.microsoft.com/pricing/details/virtual-machines/linux/ "
        "(NC24ads A100 v4, East US, pay as you go)",
    ),
    DatasheetMachine(
        "h100-pcie-lambda",
        H100_PCIE,
        XEON_8480_LAMBDA,
        2.49,
        None,
        "https://lambda.ai/pricing (1x H100 PCIe on-demand)",
    ),
    DatasheetMachine(
        "h100-sxm-lambda",
        H100_SXM,
        XEON_8480_LAMBDA,
        3.29,
        None,
        "https://lambda.ai/pricing (1x H100 SXM on-demand)",
    ),
    DatasheetMachine(
        "h200-sxm-hgx",
        H200,
        XEON_8568Y_HGX,
        3.50,
        None,
        "https://nebius.com/prices (H200 on-demand per GPU-hour, about $3.50)",
    ),
    DatasheetMachine(
        "rtx4090-ryzen7950x",
        RTX4090,
        RYZEN_7950X,
        None,
        3500.0,
        "purchase: RTX 4090 $1,599 MSRP (nvidia.com) + Ryzen 9 7950X, 128 GB DDR5, board, "
        "PSU about $1,900 (retail, 2024)",
    ),
)
