from propbench.cli import main

main()
