"""End-to-end demo on a Hygon DCU: plan, kernel micro-benchmark, runtime decode, roofline (vendor_demo.py).

    python bench/hygon_demo.py                                    # on the chip -> bench/results/hygon_demo.json / .md
    python bench/hygon_demo.py --device cpu --tiny --out /tmp/hygon_cpu_smoke.json    # smoke run of this script
"""

from vendor_demo import main

if __name__ == "__main__":
    main("hygon")
