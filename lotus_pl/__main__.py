from lotus_pl.cli import main

main()
