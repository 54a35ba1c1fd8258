"""End-to-end demo on a Cambricon MLU: plan, kernel micro-benchmark, runtime decode, roofline (vendor_demo.py).

    python bench/mlu_demo.py                                    # on the chip -> bench/results/mlu_demo.json / .md
    python bench/mlu_demo.py --device cpu --tiny --out /tmp/mlu_cpu_smoke.json    # smoke run of this script
"""

from vendor_demo import main

if __name__ == "__main__":
    main("mlu")
