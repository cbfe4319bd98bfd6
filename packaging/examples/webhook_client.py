#!/usr/bin/env python3
"""Exemplo de programa chamado a cada webhook (por `ponte webhook` ou por um agente com `hooks:`).

Recebe o JSON do webhook como primeiro argumento e responde com o que imprimir: o Ponte devolve
essa saída a quem enviou o webhook (include-command-output-in-response). Saída diferente de zero
vira uma resposta 500, e a Rute.ai (ou o relay, num túnel com fila) tenta de novo.
"""
import json
import sys


def main():
    dados = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None
    # Aqui o seu sistema grava os dados, agenda a consulta, etc.
    print(json.dumps({"status": "OK", "dados_recebidos_pelo_webhook": dados}))


if __name__ == "__main__":
    main()
