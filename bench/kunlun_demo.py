"""End-to-end demo on a Kunlunxin XPU: plan, kernel micro-benchmark, runtime decode, roofline (vendor_demo.py).

    python bench/kunlun_demo.py                                    # on the chip -> bench/results/kunlun_demo.json / .md
    python bench/kunlun_demo.py --device cpu --tiny --out /tmp/kunlun_cpu_smoke.json    # smoke run of this script
"""

from vendor_demo import main

if __name__ == "__main__":
    main("kunlun")
