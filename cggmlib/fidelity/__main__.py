from .released import main

main()
