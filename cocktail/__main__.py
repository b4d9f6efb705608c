from cocktail.cli import main

main()
