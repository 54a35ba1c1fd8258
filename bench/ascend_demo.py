"""End-to-end demo on a Huawei Ascend NPU: plan, kernel micro-benchmark, runtime decode, roofline (vendor_demo.py).

    python bench/ascend_demo.py                                    # on the chip -> bench/results/ascend_demo.json / .md
    python bench/ascend_demo.py --device cpu --tiny --out /tmp/ascend_cpu_smoke.json    # smoke run of this script
"""

from vendor_demo import main

if __name__ == "__main__":
    main("ascend")
