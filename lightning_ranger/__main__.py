from lightning_ranger.cli import main

main()
